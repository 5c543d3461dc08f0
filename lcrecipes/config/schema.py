"""The recipe: one typed dataclass tree (OmegaConf structured). Every field is documented where it is declared.

Sections: model, data, strategy, parallel, optim, train, checkpoint, eval, launch. A recipe YAML sets any subset;
parents named under ``defaults:`` are merged first; ``section.key=value`` overrides from the command line last.
Cross-field checks live in ``problems()`` next to the fields they check and return ``(key, message)`` pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lcrecipes.data.config import DataConfig
from lcrecipes.eval.suite import EvalConfig
from lcrecipes.models.spec import ModelSpec

Problems = list[tuple[str, str]]


def _one_of(key: str, value: Any, allowed: tuple) -> Problems:
    return [] if value in allowed else [(key, f"must be one of {list(allowed)}, got {value!r}")]


@dataclass
class ModelConfig:
    """Architecture (our ``ModelSpec`` fields) plus where the initial weights come from."""

    family: str = "llama"  # HF model_type: llama | qwen2
    hf_path: str | None = None  # HF checkpoint dir to start from; None = random init from the fields below
    vocab_size: int = 512
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    ffn_hidden_size: int = 172
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # HF rope_parameters minus rope_theta, kept verbatim
    norm_eps: float = 1e-6
    qkv_bias: bool = False
    tie_embeddings: bool = False

    def to_spec(self) -> ModelSpec:
        names = ModelSpec.__dataclass_fields__.keys() - {"extra"}
        return ModelSpec(**{k: getattr(self, k) for k in names})

    def problems(self) -> Problems:
        from lcrecipes.models import FAMILIES

        out = _one_of("model.family", self.family, tuple(sorted(FAMILIES)))
        out += [(f"model.{k}", m) for k, m in self.to_spec().problems()]
        if self.family == "qwen2" and not self.qkv_bias:
            out.append(("model.qkv_bias", "qwen2 models always have a qkv bias; set it to true"))
        return out


@dataclass
class StrategyConfig:
    """What the model is taught to output (the study's five strategies)."""

    name: str = "answer_only"  # answer_only | doc_ids | ids_content | ids_quotes | reasoning
    max_quote_tokens: int = 30  # ids_quotes: longest quote, in whitespace tokens

    def problems(self) -> Problems:
        names = ("answer_only", "doc_ids", "ids_content", "ids_quotes", "reasoning")
        return _one_of("strategy.name", self.name, names)


@dataclass
class ParallelConfig:
    """How ranks are split: TP x CP x PP x DP = world size (launch.nodes x launch.gpus_per_node)."""

    backend: str = "deepspeed"  # deepspeed | megatron
    tp: int = 1  # tensor parallel (megatron only)
    cp: int = 1  # context parallel: one sequence split over cp ranks (zigzag per document)
    pp: int = 1  # pipeline parallel (megatron only; 1F1B)
    sp: str = "ring"  # CP attention: ring | ulysses | allgather (portable) | te (Transformer Engine, GPU)
    cp_comm_type: str = "p2p"  # TE CP communication: p2p | a2a | allgather | a2a+p2p
    zero_stage: int = 3  # deepspeed ZeRO stage 0..3
    offload_optimizer: bool = False  # deepspeed: optimizer states in CPU memory
    offload_params: bool = False  # deepspeed: parameters in CPU memory (stage 3)
    distributed_optimizer: bool = True  # megatron: shard optimizer states over DP
    layer_spec: str = "auto"  # megatron: auto (te on GPU if installed, else local) | te | local
    timeout_s: int = 1800  # collective timeout (seconds); a dead rank fails the others after this

    def problems(self, world_size: int, spec: ModelSpec) -> Problems:
        out = _one_of("parallel.backend", self.backend, ("deepspeed", "megatron"))
        out += _one_of("parallel.sp", self.sp, ("ring", "ulysses", "allgather", "te"))
        out += _one_of("parallel.cp_comm_type", self.cp_comm_type, ("p2p", "a2a", "allgather", "a2a+p2p"))
        out += _one_of("parallel.zero_stage", self.zero_stage, (0, 1, 2, 3))
        out += _one_of("parallel.layer_spec", self.layer_spec, ("auto", "te", "local"))
        for k in ("tp", "cp", "pp"):
            if getattr(self, k) < 1:
                out.append((f"parallel.{k}", f"must be >= 1, got {getattr(self, k)}"))
        if out:
            return out
        if world_size % (self.tp * self.cp * self.pp):
            out.append(("parallel.cp", f"tp*cp*pp = {self.tp}*{self.cp}*{self.pp} does not divide the "
                        f"world size {world_size} (launch.nodes x launch.gpus_per_node)"))
        if spec.num_heads % self.tp or spec.num_kv_heads % self.tp:
            out.append(("parallel.tp", f"tp={self.tp} does not divide num_heads={spec.num_heads} "
                        f"and num_kv_heads={spec.num_kv_heads}"))
        if self.sp == "ulysses" and (spec.num_heads // self.tp) % self.cp:
            out.append(("parallel.sp", f"ulysses needs heads per TP rank ({spec.num_heads // self.tp}) "
                        f"divisible by cp={self.cp}"))
        if spec.num_layers % self.pp:
            out.append(("parallel.pp", f"pp={self.pp} does not divide num_layers={spec.num_layers}"))
        if self.backend == "deepspeed":
            for k in ("tp", "pp"):
                if getattr(self, k) != 1:
                    out.append((f"parallel.{k}", f"the deepspeed backend has no {k}; use backend=megatron"))
            if self.offload_params and self.zero_stage != 3:
                out.append(("parallel.offload_params", "parameter offload needs zero_stage=3"))
        return out


@dataclass
class OptimConfig:
    """AdamW; on CPU ``torch_adam`` avoids compiling DeepSpeed's fused Adam."""

    name: str = "adamw"
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    torch_adam: bool = True

    def problems(self) -> Problems:
        out = _one_of("optim.name", self.name, ("adamw",))
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            out.append(("optim.beta1", "betas must lie in [0, 1)"))
        return out


@dataclass
class TrainConfig:
    """The loop: schedule, batch, precision, logging. Batch sizes count packed sequences of data.seq_len tokens."""

    steps: int = 100  # optimizer steps; 0: no training, the recipe evaluates model.hf_path as it is (a base model)
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 10  # linear warmup; longer than steps just means the run ends inside warmup
    schedule: str = "cosine"  # cosine | constant | linear (after linear warmup)
    micro_batch_size: int = 1  # sequences per DP rank per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    seed: int = 1234
    dtype: str = "fp32"  # fp32 | bf16
    activation_checkpointing: bool = False
    log_every: int = 1
    eval_every: int = 0  # 0 = only at the end
    eval_batches: int = 4
    peak_tflops: float = 0.0  # per-device peak for MFU; 0 = unknown (MFU logged as 0)
    num_threads: int = 1  # CPU threads per rank (torch.set_num_threads)
    tensorboard: bool = True

    def problems(self) -> Problems:
        out = _one_of("train.schedule", self.schedule, ("cosine", "constant", "linear"))
        out += _one_of("train.dtype", self.dtype, ("fp32", "bf16"))
        if self.steps < 0:
            out.append(("train.steps", f"must be >= 0, got {self.steps}"))
        for k in ("micro_batch_size", "grad_accum", "log_every"):
            if getattr(self, k) < 1:
                out.append((f"train.{k}", f"must be >= 1, got {getattr(self, k)}"))
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            out.append(("train.min_lr", f"need 0 <= min_lr <= lr and lr > 0 (lr={self.lr}, min_lr={self.min_lr})"))
        if self.warmup_steps < 0:
            out.append(("train.warmup_steps", f"must be >= 0, got {self.warmup_steps}"))
        return out


@dataclass
class CheckpointConfig:
    """Native checkpoints (+ state.json) under ``<run_dir>/checkpoints/step_N``; ``latest`` written last."""

    every: int = 0  # save every N steps; 0 = only at the end (and on a preemption signal)
    keep_last: int = 2  # older checkpoints are deleted after a newer one is complete; 0 keeps all
    resume: str = "auto"  # auto (from latest if present) | none | a checkpoint directory
    verify: str = "fast"  # on load: full (sha256) | fast (sizes)

    def problems(self) -> Problems:
        out = _one_of("checkpoint.verify", self.verify, ("full", "fast"))
        if self.every < 0 or self.keep_last < 0:
            out.append(("checkpoint.every", "every and keep_last must be >= 0"))
        return out


@dataclass
class LaunchConfig:
    """Where ranks come from. On CPU, gpus_per_node is the number of gloo ranks per node."""

    nodes: int = 1
    gpus_per_node: int = 1  # processes per node (one per GPU; gloo ranks on CPU)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int = 60  # wall time in minutes
    cpus_per_task: int = 2
    mem_gb: int = 0  # 0 = Slurm default
    signal_s: int = 120  # USR1 this many seconds before the time limit: save and requeue
    requeue: bool = True
    max_requeues: int = 10

    def problems(self) -> Problems:
        out = []
        for k in ("nodes", "gpus_per_node", "time_min", "cpus_per_task"):
            if getattr(self, k) < 1:
                out.append((f"launch.{k}", f"must be >= 1, got {getattr(self, k)}"))
        if self.signal_s < 0 or self.signal_s >= self.time_min * 60:
            out.append(("launch.signal_s", f"must lie in [0, time_min*60) seconds, got {self.signal_s}"))
        return out

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass
class RecipeConfig:
    """A whole run. ``run_dir`` holds the resolved config, data, checkpoints, logs, HF export and eval rows."""

    name: str = "unnamed"
    root: str = "runs"  # where run dirs live; recipes write other runs' paths as ${root}/...
    run_dir: str = "${root}/${name}"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def problems(self) -> Problems:
        spec = self.model.to_spec()
        out = self.model.problems() + self.strategy.problems() + self.optim.problems()
        out += self.train.problems() + self.checkpoint.problems() + self.eval.problems() + self.launch.problems()
        out += [(k if k.startswith("data.") else f"data.{k}", m) for k, m in self.data.validate()]
        if not any(k.startswith("model.") for k, _ in out):
            out += self.parallel.problems(self.launch.world_size, spec)
        out += self._length_problems()
        if self.train.steps == 0 and not self.model.hf_path:
            out.append(("train.steps", "0 means evaluate model.hf_path as it is, but model.hf_path is not set"))
        return out

    def eval_model_dir(self) -> str:
        """The HF dir ``lcr eval RECIPE`` evaluates: ``eval.hf_dir``, else ``model.hf_path`` when ``train.steps`` is 0
        (a base model evaluated as it is), else this run's export ``<run_dir>/hf``."""
        if self.eval.hf_dir:
            return self.eval.hf_dir
        return str(self.model.hf_path) if self.train.steps == 0 else f"{self.run_dir}/hf"

    def _length_problems(self) -> Problems:
        seq, cp = self.data.seq_len, max(self.parallel.cp, 1)
        out = []
        if seq % (2 * cp):
            out.append(("data.seq_len", f"{seq} is not a multiple of 2*cp = {2 * cp} (zigzag CP layout)"))
        if seq > self.model.max_position_embeddings:
            out.append(("data.seq_len", f"{seq} exceeds model.max_position_embeddings="
                        f"{self.model.max_position_embeddings}"))
        return out
