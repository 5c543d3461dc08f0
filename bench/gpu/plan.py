"""What the bench runs and for how long: sizes per section for the H200 run and for the CPU smoke run.

Token counts are tokens per packed sequence (batch 1). Model shapes are named (see ``specs.py``) so that this
module imports nothing heavy: the orchestrating process reads budgets and timeouts from it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

K = 1024

# Run order: cheap checks first, the most expensive and least certain probe last (see sections.py).
SECTION_ORDER = ("env", "attention", "megatron_te", "train_step", "eval_compression", "offload_probe")


@dataclass
class AttentionSizes:
    """Packed documents for the attention check: ``doc_lens`` tokens each; ``tol`` = max relative error
    accepted (out and grads) against the fp32 per-document reference."""

    doc_lens: list[int]
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str
    tol: float


@dataclass
class TrainSizes:
    """One training step per (model, length); ``models`` maps a table label to a spec name. ``warmup_tokens``:
    one untimed step first (kernels, optimizer states). ``loss_chunk``: tokens per chunk of the output layer +
    cross entropy. ``assumed_mfu``: used only to predict whether a step still fits in the section's time."""

    models: dict[str, str]
    lengths: list[int]
    warmup_tokens: int
    loss_chunk: int
    assumed_mfu: float = 0.3


@dataclass
class MegatronSizes:
    spec: str
    layers: int
    doc_lens: list[int]


@dataclass
class OffloadSizes:
    """ZeRO-3 offload probe: model ``spec`` run with ``probe_layers`` layers (its peak extrapolated to the full
    depth, exact when equal) at lengths ``lengths`` (binary search), documents of ``doc_len`` tokens."""

    spec: str
    probe_layers: int
    lengths: list[int]
    doc_len: int
    loss_chunk: int
    try_timeout_s: float
    isolate_tries: bool
    headroom: float = 0.97


@dataclass
class EvalSizes:
    spec: str
    context: int
    question: int
    methods: list[str]
    budget: float
    mode: str
    max_new_tokens: int
    warmup_context: int


@dataclass
class Plan:
    """``start_budget_s``: no section starts after this many seconds; ``hard_limit_s``: every section is stopped
    by then; ``timeouts``: per-section limit in seconds; ``isolate_sections``: one fresh process per section."""

    mode: str
    allow_cpu: bool
    dtype: str
    start_budget_s: float
    hard_limit_s: float
    isolate_sections: bool
    timeouts: dict[str, float]
    attention: AttentionSizes
    train: TrainSizes
    megatron: MegatronSizes
    offload: OffloadSizes
    eval: EvalSizes
    notes: dict[str, str] = field(default_factory=dict)


def gpu_plan() -> Plan:
    """The H200 run: fits in 8 minutes including process starts (measured budgets in README.md)."""
    return Plan(
        mode="gpu", allow_cpu=False, dtype="bfloat16", start_budget_s=420.0, hard_limit_s=470.0,
        isolate_sections=True,
        timeouts={"env": 60, "attention": 90, "megatron_te": 120, "train_step": 240, "eval_compression": 150,
                  "offload_probe": 180},
        attention=AttentionSizes(doc_lens=[8000, 4096, 2048, 1200, 700, 340], heads=32, kv_heads=8, head_dim=128,
                                 dtype="bfloat16", tol=2e-2),
        train=TrainSizes(models={"1b": "llama-3.2-1b", "8b": "llama-3.1-8b"}, lengths=[32 * K, 64 * K, 128 * K],
                         warmup_tokens=4 * K, loss_chunk=8 * K),
        megatron=MegatronSizes(spec="llama-3.2-1b", layers=4, doc_lens=[4 * K, 2 * K, 1 * K, 1 * K]),
        offload=OffloadSizes(spec="llama-3.1-8b", probe_layers=2, lengths=[n * 32 * K for n in range(1, 17)],
                             doc_len=32 * K, loss_chunk=8 * K, try_timeout_s=75.0, isolate_tries=True),
        eval=EvalSizes(spec="llama-3.1-8b", context=128 * K - 64, question=64, methods=["none", "snapkv",
                       "topk_retrieval"], budget=0.1, mode="query_aware", max_new_tokens=32, warmup_context=1024),
    )  # fmt: skip


def smoke_plan() -> Plan:
    """Tiny sizes on CPU (fp32), one shared worker process: every code path of every section, in seconds."""
    return Plan(
        mode="cpu-smoke", allow_cpu=True, dtype="float32", start_budget_s=100.0, hard_limit_s=110.0,
        isolate_sections=False,
        timeouts={"env": 30, "attention": 30, "megatron_te": 30, "train_step": 40, "eval_compression": 40,
                  "offload_probe": 60},
        attention=AttentionSizes(doc_lens=[37, 64, 20, 7], heads=4, kv_heads=2, head_dim=16, dtype="float32",
                                 tol=1e-4),
        train=TrainSizes(models={"1b": "tiny-a", "8b": "tiny-b"}, lengths=[32, 64, 128], warmup_tokens=16,
                         loss_chunk=96),
        megatron=MegatronSizes(spec="tiny-a", layers=2, doc_lens=[64, 32, 32]),
        offload=OffloadSizes(spec="tiny-b", probe_layers=1, lengths=[64, 128, 256], doc_len=64, loss_chunk=96,
                             try_timeout_s=30.0, isolate_tries=False),
        eval=EvalSizes(spec="tiny-a", context=192, question=16, methods=["none", "snapkv", "topk_retrieval"],
                       budget=0.25, mode="query_aware", max_new_tokens=4, warmup_context=32),
    )  # fmt: skip


PLANS = {"gpu": gpu_plan, "cpu-smoke": smoke_plan}


def make_plan(
    mode: str,
    *,
    offload_layers: int | None = None,
    eval_spec: str | None = None,
    budget_s: float | None = None,
    isolate: bool | None = None,
) -> Plan:
    """The plan of ``mode`` ("gpu" or "cpu-smoke") with the command-line overrides applied."""
    plan = PLANS[mode]()
    if offload_layers is not None:
        plan.offload.probe_layers = offload_layers
    if eval_spec is not None:
        plan.eval.spec = eval_spec
    if budget_s is not None:
        plan.hard_limit_s = plan.hard_limit_s - plan.start_budget_s + budget_s
        plan.start_budget_s = budget_s
    if isolate is not None:
        plan.isolate_sections = isolate
    return plan
