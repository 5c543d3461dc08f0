"""Per-GPU memory and throughput planner for a recipe: ``lcr plan RECIPE [--gpu-mem-gb 80]``.

All sizes are bytes per GPU. The model (mixed precision, Adam):
- weights: 2 B/param (bf16) or 4 (fp32), split over tp*pp; ZeRO-3 also splits them over the ZeRO group.
- grads: same dtype as weights for DeepSpeed (split from ZeRO-2), fp32 main grads for Megatron (split over tp*pp).
- optimizer: Adam m, v (+ fp32 master copy under bf16) = 8 (+4) B/param, split over the ZeRO group (DeepSpeed,
  stage >= 1) or over DP*CP (Megatron distributed optimizer); CPU offload moves it to host memory.
- activations: ``activation_bytes_per_token_layer`` below (the tensors autograd saves for backward in one
  llama/qwen2 decoder layer), times the tokens this GPU holds (seq_len / cp) and the layers of its pipeline
  stage; with activation checkpointing only each layer's input is kept, plus one layer's full set recomputed.
- logits: fp32 logits and their gradient for the GPU's tokens, vocab split over tp.
- CP attention buffers: K and V blocks in flight (sent + received) for one layer.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

from lcrecipes.config.schema import RecipeConfig
from lcrecipes.models.flops import training_flops
from lcrecipes.models.spec import ModelSpec

GiB = 1024**3


def activation_bytes_per_token_layer(spec: ModelSpec, dtype_bytes: int, tp: int = 1) -> int:
    """Bytes autograd saves per token in one decoder layer (no checkpointing), split over ``tp``.

    Counted tensor by tensor for transformers' llama/qwen2 layer with SDPA: the two RMSNorms keep their input,
    the normalised activations and the scaled output (5·h over both, sharing one), attention keeps rotated q,
    k and v, its output and the o_proj input (3·q + 2·kv) plus a float32 log-sum-exp per head, the MLP keeps
    gate, up, silu(gate) and their product (4·ffn), and each RMSNorm a float32 rsqrt. Checked against the
    tensors autograd really saves in ``tests/unit/test_plan.py``.
    """
    h, q, kv, ffn = spec.hidden_size, spec.q_size, spec.kv_size, spec.ffn_hidden_size
    elems = 5 * h + 3 * q + 2 * kv + 4 * ffn
    return (elems * dtype_bytes) // tp + (spec.num_heads // tp + 2) * 4


@dataclass
class MemoryPlan:
    """Bytes per GPU for one layout."""

    tp: int
    cp: int
    pp: int
    dp: int
    offload: bool
    weights: int
    grads: int
    optimizer: int
    activations: int
    logits: int
    cp_buffers: int
    host_bytes: int
    tokens_per_s_ceiling: float

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations + self.logits + self.cp_buffers

    def row(self) -> dict:
        d = asdict(self)
        d["total"] = self.total
        return d


def plan(cfg: RecipeConfig, tp: int | None = None, cp: int | None = None, pp: int | None = None,
         offload: bool | None = None) -> MemoryPlan:
    """Predict per-GPU memory of ``cfg`` (optionally with another layout)."""
    spec, par, train = cfg.model.to_spec(), cfg.parallel, cfg.train
    tp, cp, pp = tp or par.tp, cp or par.cp, pp or par.pp
    offload = par.offload_optimizer if offload is None else offload
    world = cfg.launch.world_size
    dp = max(world // (tp * cp * pp), 1)
    wbytes = 2 if train.dtype == "bf16" else 4
    params = spec.num_params() / (tp * pp)
    megatron = par.backend == "megatron"
    zero_group = dp * cp if megatron else world // (tp * pp)
    stage = 0 if megatron else par.zero_stage
    weights = params * wbytes / (zero_group if stage >= 3 else 1)
    grads = params * (4 if megatron else wbytes) / (zero_group if stage >= 2 else 1)
    opt_per_param = 8 + (4 if wbytes == 2 else 0)
    opt_shard = zero_group if (megatron and par.distributed_optimizer) or stage >= 1 else 1
    optimizer = params * opt_per_param / opt_shard
    host = 0
    if offload:
        host, optimizer = int(optimizer), 0
    tokens = cfg.data.seq_len * train.micro_batch_size / cp
    per_layer = activation_bytes_per_token_layer(spec, wbytes, tp)
    layers = spec.num_layers / pp
    if train.activation_checkpointing:
        act = tokens * (layers * spec.hidden_size * wbytes + per_layer)
    else:
        act = tokens * layers * per_layer
    act *= pp if pp > 1 else 1  # 1F1B keeps up to pp micro-batches in flight on the first stage
    logits = tokens * spec.vocab_size / tp * 4 * 2
    cp_buf = 0 if cp == 1 else tokens * 2 * spec.kv_size * wbytes * 2 / tp
    docs = max(cfg.data.seq_len // cfg.data.context_tokens, 1)
    flops_per_seq = training_flops(spec, [cfg.data.seq_len // docs] * docs)
    peak = train.peak_tflops * 1e12
    ceiling = world * peak * cfg.data.seq_len / flops_per_seq if peak else 0.0
    return MemoryPlan(tp, cp, pp, dp, offload, int(weights), int(grads), int(optimizer), int(act), int(logits),
                      int(cp_buf), host, ceiling)


def candidates(cfg: RecipeConfig) -> list[tuple[int, int, int, bool]]:
    """Layouts (tp, cp, pp, offload) that the recipe's world size, heads and layers allow."""
    spec, world = cfg.model.to_spec(), cfg.launch.world_size
    pow2 = [2**i for i in range(0, 12) if 2**i <= world]
    megatron = cfg.parallel.backend == "megatron"
    tps = [t for t in pow2 if t <= cfg.launch.gpus_per_node and spec.num_kv_heads % t == 0] if megatron else [1]
    pps = [p for p in pow2 if spec.num_layers % p == 0] if megatron else [1]
    out = []
    for tp, cp, pp, off in itertools.product(tps, pow2, pps, (False, True)):
        if world % (tp * cp * pp) == 0 and cfg.data.seq_len % (2 * cp) == 0 and (not off or not megatron):
            out.append((tp, cp, pp, off))
    return out


def recommend(cfg: RecipeConfig, gpu_mem_bytes: float, headroom: float = 0.9) -> MemoryPlan | None:
    """The fitting layout with the least model parallelism (most DP), then no offload, then the least memory."""
    fits = [plan(cfg, tp, cp, pp, off) for tp, cp, pp, off in candidates(cfg)]
    fits = [p for p in fits if p.total <= gpu_mem_bytes * headroom]
    if not fits:
        return None
    return min(fits, key=lambda p: (p.tp * p.cp * p.pp, p.offload, p.total))


def format_plan(p: MemoryPlan) -> str:
    rows = [("weights", p.weights), ("grads", p.grads), ("optimizer", p.optimizer), ("activations", p.activations),
            ("logits", p.logits), ("cp buffers", p.cp_buffers), ("total", p.total), ("host (offload)", p.host_bytes)]
    head = f"layout tp={p.tp} cp={p.cp} pp={p.pp} dp={p.dp} offload={p.offload}"
    body = "\n".join(f"  {k:<15}{v / GiB:10.2f} GiB" for k, v in rows)
    tail = f"  tokens/s ceiling (100% MFU, all GPUs): {p.tokens_per_s_ceiling:,.0f}" if p.tokens_per_s_ceiling else ""
    return "\n".join(x for x in (head, body, tail) if x)
