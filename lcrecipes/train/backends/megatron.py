"""Megatron-Core backend: ``GPTModel`` from our model spec with TP, CP, PP (1F1B) and DP (distributed optimizer).

The loop's contract is unchanged (``base``): packed micro-batches in our zigzag CP layout, the loss sum over target
tokens times ``weight = 1 / global target tokens``. How Megatron is driven:

- layer spec: ``parallel.layer_spec`` (``auto``: Transformer Engine on GPU when installed, else ``local``); the local
  spec runs our portable CP attention (``parallel.sp``) as ``core_attention``, fed by ``CPPackedSeqParams``;
- weights: this TP rank's / PP stage's slices streamed from ``model.hf_path``'s safetensors
  (``hf_dir_to_megatron``; the full model is never built), or the seeded HF random init (the deepspeed backend's,
  identical for any layout) mapped by ``hf_to_megatron``;
- ``calculate_per_token_loss=True``: DDP sums gradients over DP x CP (no averaging), the schedule does not divide
  the returned loss, and our ``finalize`` skips Megatron's division by the token count: the summed gradient is the
  gradient of ``sum(target-token losses) / global target tokens`` (DESIGN contract 7);
- the loss sum of a micro-batch is computed on the last stage (vocab-parallel cross entropy over TP) and broadcast
  over the pipeline group, so every rank returns its (DP, CP) position's loss sum.

Checkpoints: ``<dir>/model`` and ``<dir>/optim`` written by ``megatron.core.dist_checkpointing`` (``torch_dist``),
and the HF ``config.json``. Both reshard: the model and the (distributed) optimizer state saved at one TP / PP / DP
layout load at another (e.g. DP=2 -> DP=1, TP=2 -> TP=1). Megatron-Core needs CUDA; the CPU tests
redirect its device placement with a test fixture (``tests/megatron_cpu.py``), never imported here.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from lcrecipes.config import RecipeConfig
from lcrecipes.train.backends.base import Backend, register_backend
from lcrecipes.train.batch import IGNORE, MicroBatch

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODEL_DIR, OPTIM_DIR = "model", "optim"
# Distributed optimizer checkpoints in model space (each parameter's Adam state as a tensor of its shape): they load
# at any TP / PP / DP layout. Saving gathers each DP group's optimizer shards on every rank of the group for a moment.
OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True}
LEGACY_OPTIM_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}  # checkpoints without content metadata


def _ensure_process_group(device: torch.device, timeout_s: int) -> None:
    """Megatron needs torch.distributed even on one process: start a one-rank group when there is none."""
    if dist.is_initialized():
        return
    import os

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1,
                            timeout=timedelta(seconds=timeout_s))


def _finalize(model_chunks, num_tokens=None, *args, **kwargs) -> None:
    """Megatron's ``finalize_model_grads`` without the division by the token count (our weight did it)."""
    from megatron.core.distributed import finalize_model_grads

    finalize_model_grads(model_chunks, None, *args, **kwargs)


def optimizer_config(cfg: RecipeConfig):
    """Megatron ``OptimizerConfig``: AdamW, no weight decay on norms and biases, clipping, fp32 master weights."""
    from megatron.core.optimizer import OptimizerConfig

    o, t, dtype = cfg.optim, cfg.train, DTYPES[cfg.train.dtype]
    return OptimizerConfig(optimizer="adam", lr=t.lr, weight_decay=o.weight_decay, adam_beta1=o.beta1,
                           adam_beta2=o.beta2, adam_eps=o.eps, clip_grad=o.grad_clip, bf16=dtype == torch.bfloat16,
                           fp16=dtype == torch.float16, params_dtype=dtype,
                           use_distributed_optimizer=cfg.parallel.distributed_optimizer)


def config_overrides(cfg: RecipeConfig, kind: str) -> dict:
    """``TransformerConfig`` settings of a recipe beyond the model's shape (``kind``: the resolved layer spec)."""
    out: dict = {"calculate_per_token_loss": True}
    if kind == "te" and cfg.parallel.cp > 1:
        out["cp_comm_type"] = cfg.parallel.cp_comm_type  # Transformer Engine's own CP attention
    if cfg.train.activation_checkpointing:
        out.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    return out


def saved_optim_metadata(optim_dir: Path) -> dict:
    """The optimizer metadata a checkpoint was saved with (older checkpoints: ``LEGACY_OPTIM_METADATA``)."""
    from megatron.core import dist_checkpointing

    return dist_checkpointing.load_content_metadata(str(optim_dir)) or LEGACY_OPTIM_METADATA


# Megatron's loaders of the distributed optimizer's parameter state, by ``param_state_sharding_type``
PARAM_STATE_LOADERS = {
    "fully_reshardable": lambda opt, s: opt.load_parameter_state_from_fully_reshardable(s),
    "dp_reshardable": lambda opt, s: opt.load_parameter_state_from_dp_reshardable(s),
}


def _is_torch_adam(opt) -> bool:
    return isinstance(opt, torch.optim.Adam | torch.optim.AdamW)


@register_backend
class MegatronBackend(Backend):
    name = "megatron"

    # ----- setup -------------------------------------------------------------------------------------------
    def setup(self) -> None:
        from megatron.core import parallel_state as ps
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        p = self.cfg.parallel
        _ensure_process_group(self.device, p.timeout_s)
        ps.initialize_model_parallel(tensor_model_parallel_size=p.tp, pipeline_model_parallel_size=p.pp,
                                     context_parallel_size=p.cp)
        try:
            model_parallel_cuda_manual_seed(self.cfg.train.seed)
        except (AssertionError, RuntimeError) as e:  # CPU torch: "Torch not compiled with CUDA enabled"
            ps.destroy_model_parallel()
            raise RuntimeError("parallel.backend=megatron needs CUDA GPUs (Megatron-Core places its tensors on "
                               "CUDA); on CPU use parallel.backend=deepspeed") from e
        self._check_mesh(ps)
        self.cp_group = ps.get_context_parallel_group()
        self.model = self._wrap(self._build_model())
        from megatron.core.optimizer import get_megatron_optimizer

        self.optimizer = get_megatron_optimizer(optimizer_config(self.cfg), [self.model])

    def _check_mesh(self, ps) -> None:
        """The loop's mesh (data, CP layout) must place this rank where Megatron's groups do."""
        live = (ps.get_tensor_model_parallel_rank(), ps.get_context_parallel_rank(), ps.get_data_parallel_rank(),
                ps.get_pipeline_model_parallel_rank())
        m = self.mesh
        mine = (m.tp_rank, m.cp_rank, m.dp_rank, m.pp_rank)
        if live != mine:
            raise RuntimeError(f"rank {m.rank}: mesh (tp, cp, dp, pp) ranks {mine} differ from Megatron's {live}; "
                               "build the mesh with build_mesh(cp, tp, pp)")

    def _build_model(self):
        from lcrecipes.models.megatron import build_gpt_model, resolve_layer_spec_kind
        from lcrecipes.train.backends.megatron_attention import core_attention_for
        from lcrecipes.train.hf_model import model_spec

        self.spec = model_spec(self.cfg)
        self.kind = resolve_layer_spec_kind(self.cfg.parallel.layer_spec)
        core = None if self.kind == "te" else core_attention_for(self.attention)
        # Megatron's own init runs (it also marks TP-sharded parameters, which the grad norm needs), then the HF
        # weights overwrite it
        model = build_gpt_model(self.spec, self.cfg.parallel, DTYPES[self.cfg.train.dtype], kind=self.kind,
                                core_attention=core, **config_overrides(self.cfg, self.kind))
        model.config.variable_seq_lengths = self.cfg.parallel.pp > 1  # PP: CP padding varies T_local per batch
        self._load_hf_weights(model)
        return model.to(self.device)

    def _load_hf_weights(self, model) -> None:
        """This rank's slice of the HF weights: streamed from ``model.hf_path``'s safetensors (only the slices
        of this TP rank / PP stage are read), or taken from the seeded HF random init (tiny models)."""
        from megatron.core import parallel_state as ps

        from lcrecipes.models.megatron_weights import hf_to_megatron, stage_layers
        from lcrecipes.models.megatron_weights_stream import SafetensorsDir, hf_dir_to_megatron

        pp_rank, pp = ps.get_pipeline_model_parallel_rank(), ps.get_pipeline_model_parallel_world_size()
        where = dict(names="te" if self.kind == "te" else "local", tp_rank=ps.get_tensor_model_parallel_rank(),
                     tp_size=ps.get_tensor_model_parallel_world_size(), layers=stage_layers(self.spec, pp_rank, pp),
                     pre_process=model.pre_process, post_process=model.post_process)
        if self.cfg.model.hf_path:
            with SafetensorsDir(self.cfg.model.hf_path) as files:
                sd = hf_dir_to_megatron(self.spec, files, **where)
            log.info("read %.1f MB of %s for this rank's slice", files.bytes_read / 2**20, self.cfg.model.hf_path)
        else:
            from lcrecipes.train.hf_model import build_hf_model

            sd = hf_to_megatron(self.spec, build_hf_model(self.cfg, "sdpa").state_dict(), **where)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        if missing or unexpected:
            raise KeyError(f"HF weights do not fit the Megatron model: missing {missing[:5]}, "
                           f"unexpected {list(unexpected)[:5]}")

    def _wrap(self, model):
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

        ddp = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                            use_distributed_optimizer=self.cfg.parallel.distributed_optimizer)
        wrapped = DistributedDataParallel(config=model.config, ddp_config=ddp, module=model)
        model.config.no_sync_func = wrapped.no_sync
        model.config.finalize_model_grads_func = _finalize
        return wrapped

    # ----- steps -------------------------------------------------------------------------------------------
    def _forward_step(self, data_iterator, model):
        """Megatron's ``forward_step_func``: the model output and the loss function of one micro-batch."""
        from lcrecipes.train.backends.megatron_attention import packed_seq_params

        mb, weight = next(data_iterator)
        out = model(input_ids=mb.input_ids, position_ids=mb.meta.position_ids[None], attention_mask=None,
                    labels=mb.labels.clamp(min=0), packed_seq_params=packed_seq_params(mb.meta, self.cp_group))
        return out, partial(self._loss, mb.labels, weight)

    @staticmethod
    def _loss(labels: torch.Tensor, weight: float, token_losses: torch.Tensor):
        """``token_losses`` ``[1, T_local]`` (nats, fp32) -> (weighted loss sum, target tokens, loss sum)."""
        mask = labels != IGNORE
        loss_sum = (token_losses.float() * mask).sum()
        return loss_sum * weight, mask.sum().to(torch.int), loss_sum.detach()

    def _run(self, micro_batches: Sequence[MicroBatch], weight: float, forward_only: bool) -> float:
        """All micro-batches through the schedule (1F1B when PP > 1); the local loss sum on every rank."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        data = iter([(mb.to(self.device), weight) for mb in micro_batches])
        outs = get_forward_backward_func()(
            forward_step_func=self._forward_step, data_iterator=data, model=[self.model],
            num_microbatches=len(micro_batches), seq_length=micro_batches[0].input_ids.shape[1], micro_batch_size=1,
            forward_only=forward_only)
        return self._from_last_stage(sum(float(x) for x in outs) if outs else 0.0)

    def _from_last_stage(self, value: float) -> float:
        from megatron.core import parallel_state as ps

        if ps.get_pipeline_model_parallel_world_size() == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=ps.get_pipeline_model_parallel_last_rank(),
                       group=ps.get_pipeline_model_parallel_group())
        return float(t.item())

    def forward_backward(self, micro_batches: Sequence[MicroBatch], weight: float) -> float:
        if len(micro_batches) != self.cfg.train.grad_accum:
            raise ValueError(f"got {len(micro_batches)} micro-batches, train.grad_accum={self.cfg.train.grad_accum}")
        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        return self._run(micro_batches, weight, forward_only=False)

    def optimizer_step(self, lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        _, grad_norm, _ = self.optimizer.step()
        return float(grad_norm) if grad_norm is not None else float("nan")

    @torch.no_grad()
    def eval_loss(self, mb: MicroBatch) -> float:
        self.model.eval()
        return self._run([mb], 1.0, forward_only=True)

    # ----- full tensors by HF name (checks against single-process references) -----------------------------------
    def full_grads(self) -> dict[str, torch.Tensor]:
        """After ``forward_backward``: the summed fp32 gradients, gathered over DP x CP shards, TP and PP."""
        self._all_gather_grad_shards()
        return self._full({n: p.main_grad for n, p in self.model.module.named_parameters()})

    def full_params(self) -> dict[str, torch.Tensor]:
        return self._full({n: p.detach() for n, p in self.model.module.named_parameters()})

    def _all_gather_grad_shards(self) -> None:
        """Distributed optimizer: after the reduce-scatter every DP x CP rank holds only its shard of each
        bucket's summed gradient; gather whole buckets (the optimizer reads only its own, unchanged shard)."""
        from megatron.core.distributed.param_and_grad_buffer import shard_buffer

        if not self.cfg.parallel.distributed_optimizer:
            return
        for buffer in self.model.buffers + self.model.expert_parallel_buffers:
            group = buffer.dp_cp_group
            n = dist.get_world_size(group)
            for bucket in buffer.buckets if n > 1 else ():
                shards = shard_buffer(bucket.grad_data, n)
                dist.all_gather(list(shards), shards[dist.get_rank(group)].clone(), group=group)

    def _full(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's Megatron tensors -> all of them (TP gathered, every PP stage) by HF name, fp32 on CPU."""
        from megatron.core import parallel_state as ps

        from lcrecipes.models.megatron_weights import megatron_to_hf

        params = dict(self.model.module.named_parameters())
        mine = {self._global_name(n): self._tp_gather(n, params[n], t).detach().float().cpu().clone()
                for n, t in local.items()}
        parts = [mine]
        if ps.get_pipeline_model_parallel_world_size() > 1:
            parts = [None] * ps.get_pipeline_model_parallel_world_size()
            dist.all_gather_object(parts, mine, group=ps.get_pipeline_model_parallel_group())
        return megatron_to_hf(self.spec, {k: v for part in parts for k, v in part.items()})

    def _global_name(self, name: str) -> str:
        """``decoder.layers.{j}.`` of this pipeline stage -> the global layer index."""
        from megatron.core import parallel_state as ps

        if not name.startswith("decoder.layers."):
            return name
        _, _, j, rest = name.split(".", 3)
        per = self.spec.num_layers // ps.get_pipeline_model_parallel_world_size()
        return f"decoder.layers.{ps.get_pipeline_model_parallel_rank() * per + int(j)}.{rest}"

    @staticmethod
    def _tp_gather(name: str, param: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The full tensor of a TP-sharded parameter (``linear_fc1``: gate and up halves gathered apart)."""
        from megatron.core import parallel_state as ps

        tp = ps.get_tensor_model_parallel_world_size()
        if tp == 1 or not getattr(param, "tensor_model_parallel", False):
            return t
        pieces = [torch.empty_like(t) for _ in range(tp)]
        dist.all_gather(pieces, t.contiguous(), group=ps.get_tensor_model_parallel_group())
        if name.endswith("linear_fc1.weight"):
            gates, ups = zip(*(p.chunk(2) for p in pieces))
            return torch.cat([*gates, *ups])
        return torch.cat(pieces, dim=param.partition_dim)

    # ----- checkpoints -------------------------------------------------------------------------------------
    def save(self, ckpt_dir: Path) -> None:
        """Model and optimizer with ``dist_checkpointing`` under ``model/`` and ``optim/``, plus ``config.json``.
        The optimizer is saved in model space (``OPTIM_METADATA``): it loads at any TP / PP / DP layout."""
        from megatron.core import dist_checkpointing

        for sub in (MODEL_DIR, OPTIM_DIR):
            (ckpt_dir / sub).mkdir(parents=True, exist_ok=True)
        dist.barrier()
        dist_checkpointing.save(self.model.module.sharded_state_dict(), str(ckpt_dir / MODEL_DIR))
        model_sd = self.model.module.sharded_state_dict()  # save() rewrites the dict it is given: a fresh one
        dist_checkpointing.save(self.optimizer.sharded_state_dict(model_sd, metadata=OPTIM_METADATA),
                                str(ckpt_dir / OPTIM_DIR), content_metadata=OPTIM_METADATA)
        if dist.get_rank() == 0:
            from lcrecipes.models import hf_config_from_spec

            hf_config_from_spec(self.spec).save_pretrained(str(ckpt_dir))

    def load(self, ckpt_dir: Path) -> None:
        """Inverse of :meth:`save`, at any TP / PP / DP layout (model and optimizer; a checkpoint of the older
        ``dp_reshardable`` optimizer format needs the layout it was saved at)."""
        from megatron.core import dist_checkpointing

        from lcrecipes.models.megatron import load_checkpoint

        load_checkpoint(self.model.module, ckpt_dir / MODEL_DIR)
        self._init_optimizer_state()
        metadata = saved_optim_metadata(ckpt_dir / OPTIM_DIR)
        model_sd = self.model.module.sharded_state_dict()
        state = dist_checkpointing.load(self.optimizer.sharded_state_dict(model_sd, is_loading=True,
                                                                           metadata=metadata),
                                        str(ckpt_dir / OPTIM_DIR))
        with torch.no_grad():  # fp32 main params are views of the model's parameters
            self._load_optimizer_state(state)
        self._sync_adam_steps()

    def _load_optimizer_state(self, state: dict) -> None:
        """Megatron's ``load_state_dict``, with the distributed optimizer's parameter state loaded apart: its
        model-space loaders copy every key of torch AdamW's per-parameter state, ``step`` included, which the
        checkpoint keeps in the param groups instead (``KeyError: 'step'``); ``step`` is set again afterwards."""
        chained = getattr(self.optimizer, "chained_optimizers", [self.optimizer])
        state.pop("content_metadata", None)  # dist_checkpointing.save(content_metadata=...) rides along
        states = [state] if len(chained) == 1 else [state[k] for k in sorted(state)]
        for opt, st in zip(chained, states, strict=True):
            param_state, kind = st.pop("param_state", None), st.pop("param_state_sharding_type", None)
            opt.load_state_dict(st)
            if param_state is None:
                continue
            for inner_state in opt.optimizer.state.values() if _is_torch_adam(opt.optimizer) else ():
                inner_state.pop("step", None)
            PARAM_STATE_LOADERS[kind](opt, param_state)

    def _torch_adams(self) -> list[torch.optim.Optimizer]:
        """The inner torch Adam(W) optimizers: without Apex / Transformer Engine, Megatron falls back to them."""
        chained = getattr(self.optimizer, "chained_optimizers", [self.optimizer])
        return [opt.optimizer for opt in chained if _is_torch_adam(opt.optimizer)]

    def _init_optimizer_state(self) -> None:
        """Zero Adam states with ``step`` 0 where none exist yet: Megatron's ``state_dict`` (called while loading)
        needs them with torch's AdamW (fused Adams allocate their own); the load then overwrites them."""
        for inner in self._torch_adams():
            for group in inner.param_groups:
                for param in group["params"]:
                    if not inner.state[param]:
                        inner.state[param].update(exp_avg=torch.zeros_like(param), step=torch.tensor(0.0),
                                                  exp_avg_sq=torch.zeros_like(param))

    def _sync_adam_steps(self) -> None:
        """torch's AdamW keeps ``step`` per parameter; Megatron restores it in the param groups only."""
        for inner in self._torch_adams():
            for group in inner.param_groups:
                if "step" in group:
                    for param in group["params"]:
                        inner.state[param]["step"] = torch.tensor(float(group["step"]))

    def close(self) -> None:
        from megatron.core import parallel_state as ps

        self.model = self.optimizer = None
        ps.destroy_model_parallel()
        gc.collect()
