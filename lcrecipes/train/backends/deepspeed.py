"""DeepSpeed ZeRO backend (stages 0-3, optional CPU offload of optimizer states and parameters) for HF models.

CP groups come from the mesh and the CP attention is registered with transformers; DeepSpeed itself sees every
rank as data parallel, so ZeRO-3 shards parameters over all DP x CP ranks and averages gradients over all of them.
Loss scaling (stated once, here): DeepSpeed divides the summed gradients by the world size, so each rank
backpropagates ``loss_sum * weight * world_size`` with ``weight = 1 / global target tokens`` and without
DeepSpeed's own division by the accumulation steps; the averaged gradient is then exactly the gradient of
``sum(target-token losses) / global target tokens``.

On CPU: DeepSpeed's CPU accelerator over gloo; ``optim.torch_adam`` uses ``torch.optim.AdamW`` (no fused-Adam
build); the first ``init_distributed`` builds a small shm extension under ``TORCH_EXTENSIONS_DIR``.

Resume never unpickles arbitrary objects: DeepSpeed's ``TorchCheckpointEngine.load`` (the one place its
``load_checkpoint`` reads files) calls ``torch.load(weights_only=False)``, so during :meth:`DeepSpeedBackend.load`
the engine's checkpoint engine is wrapped to load with ``weights_only=True`` and DeepSpeed's own checkpoint
classes allow-listed (``lcrecipes.checkpoint.safe_load``); a file holding anything else fails naming it.
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import torch

from lcrecipes.checkpoint.safe_load import load_weights_only
from lcrecipes.checkpoint.verify import CheckpointError
from lcrecipes.config import RecipeConfig
from lcrecipes.train.backends.base import Backend, register_backend
from lcrecipes.train.batch import MicroBatch
from lcrecipes.train.hf_model import build_hf_model
from lcrecipes.train.loss import token_loss_sum

# DeepSpeed 0.19 calls torch's renamed collectives on every ZeRO-3 gather/scatter: 4 warnings per step, same text
warnings.filterwarnings("ignore", category=FutureWarning,
                        message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated")

NATIVE_TAG = "native"  # DeepSpeed writes <checkpoint dir>/native/...


def ds_config(cfg: RecipeConfig) -> dict:
    """The DeepSpeed config dict for a recipe (batch sizes count packed sequences)."""
    p, t, o = cfg.parallel, cfg.train, cfg.optim
    zero: dict = {"stage": p.zero_stage, "stage3_gather_16bit_weights_on_model_save": False}
    if p.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if p.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    out = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": o.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": t.dtype == "bf16"},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if not o.torch_adam:
        out["optimizer"] = {"type": "AdamW", "params": {"lr": t.lr, "betas": [o.beta1, o.beta2], "eps": o.eps,
                                                        "weight_decay": o.weight_decay}}
    return out


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on norms and biases)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


class _WeightsOnlyCheckpointEngine:
    """A DeepSpeed checkpoint engine whose ``load`` is ``torch.load(weights_only=True)`` (allow-listed classes
    only); every other attribute is the wrapped engine's."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def load(self, path: str, map_location=None):
        return load_weights_only(path, map_location=map_location, error=CheckpointError)


@contextlib.contextmanager
def weights_only_loads(engine) -> Iterator[None]:
    """While active, every file ``engine.load_checkpoint`` reads is loaded with ``weights_only=True``."""
    original = engine.checkpoint_engine
    engine.checkpoint_engine = _WeightsOnlyCheckpointEngine(original)
    try:
        yield
    finally:
        engine.checkpoint_engine = original


@register_backend
class DeepSpeedBackend(Backend):
    name = "deepspeed"

    def setup(self) -> None:
        import deepspeed

        backend = "nccl" if self.device.type == "cuda" else "gloo"
        deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=self.cfg.parallel.timeout_s))
        config = ds_config(self.cfg)
        self._hf_ds = self._zero3_loading(config)
        model = build_hf_model(self.cfg, self.attention)
        o = self.cfg.optim
        optimizer = None
        if o.torch_adam:
            optimizer = torch.optim.AdamW(_param_groups(model, o.weight_decay), lr=self.cfg.train.lr,
                                          betas=(o.beta1, o.beta2), eps=o.eps)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config,
                                               model_parameters=None if optimizer else _param_groups(
                                                   model, o.weight_decay))

    def _zero3_loading(self, config: dict):
        """With ZeRO-3 and a HF checkpoint, let transformers load the weights straight into partitions."""
        if self.cfg.parallel.zero_stage != 3 or not self.cfg.model.hf_path:
            return None
        from transformers.integrations import HfDeepSpeedConfig

        batch = config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"]
        return HfDeepSpeedConfig({**config, "train_batch_size": batch * self.mesh.world_size})  # keep alive

    def _forward(self, mb: MicroBatch) -> torch.Tensor:
        from lcrecipes.parallel.hf import cp_forward_kwargs

        mb = mb.to(self.device)
        group = self.mesh.cp_group if mb.meta.cp_size > 1 else None
        out = self.engine(input_ids=mb.input_ids, **cp_forward_kwargs(mb.meta, group))
        return token_loss_sum(out.logits, mb.labels.to(out.logits.device))

    def forward_backward(self, micro_batches: Sequence[MicroBatch], weight: float) -> float:
        if len(micro_batches) != self.cfg.train.grad_accum:
            raise ValueError(f"got {len(micro_batches)} micro-batches, train.grad_accum={self.cfg.train.grad_accum}")
        self.engine.train()
        total = 0.0
        for i, mb in enumerate(micro_batches):
            loss_sum = self._forward(mb)
            self.engine.backward(loss_sum * (weight * self.mesh.world_size), scale_wrt_gas=False)
            if i < len(micro_batches) - 1:
                self.engine.step()  # not an accumulation boundary: DeepSpeed only counts the micro-step
            total += float(loss_sum.detach())
        return total

    def optimizer_step(self, lr: float) -> float:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    @torch.no_grad()
    def eval_loss(self, mb: MicroBatch) -> float:
        self.engine.eval()
        return float(self._forward(mb))

    def full_grads(self) -> dict[str, torch.Tensor]:
        from deepspeed.utils import safe_get_full_grad

        return {n: safe_get_full_grad(p).detach().float().cpu().clone()
                for n, p in self.engine.module.named_parameters()}

    def full_params(self) -> dict[str, torch.Tensor]:
        """Full fp32 parameters by HF name (collective under ZeRO-3)."""
        from deepspeed.utils import safe_get_full_fp32_param

        return {n: safe_get_full_fp32_param(p).detach().float().cpu().clone()
                for n, p in self.engine.module.named_parameters()}

    def save(self, ckpt_dir: Path) -> None:
        """DeepSpeed's native state under ``native/`` plus the HF ``config.json`` (what the converter reads)."""
        self.engine.save_checkpoint(str(ckpt_dir), tag=NATIVE_TAG, save_latest=False)
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            self.engine.module.config.save_pretrained(str(ckpt_dir))

    def load(self, ckpt_dir: Path) -> None:
        """Load ``native/`` (weights-only: a pickled object outside the allow-list raises CheckpointError)."""
        with weights_only_loads(self.engine):
            path, _ = self.engine.load_checkpoint(str(ckpt_dir), tag=NATIVE_TAG, load_optimizer_states=True,
                                                  load_lr_scheduler_states=False)
        if path is None:
            raise CheckpointError(f"{ckpt_dir / NATIVE_TAG}: DeepSpeed could not load this checkpoint")

    def close(self) -> None:
        self.engine.destroy()
        self.engine = None
        self._hf_ds = None
        gc.collect()
