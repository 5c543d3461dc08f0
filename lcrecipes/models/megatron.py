"""Build Megatron-Core GPT models from our ``ModelSpec`` (llama / qwen2 shape).

    cfg = transformer_config(spec, parallel_cfg, torch.bfloat16)      # RMSNorm, SwiGLU, GQA, RoPE base, qkv bias
    model = build_gpt_model(spec, parallel_cfg, torch.bfloat16, kind="te")

``layer_spec(kind)`` is the one factory for layer specs: ``"te"`` (Transformer Engine, GPU) or ``"local"``
(Megatron-Core modules only; runs anywhere) with a pluggable ``core_attention`` module (our portable CP attention
plugs in there). Megatron-Core must already have its model-parallel groups initialised
(``parallel_state.initialize_model_parallel``). HF <-> Megatron weight names live in ``megatron_weights.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from lcrecipes.models.megatron_rope import MEGATRON_LLAMA3_FIXED, UnsupportedRopeError, rope_kwargs
from lcrecipes.models.spec import ModelSpec

__all__ = ["MEGATRON_LLAMA3_FIXED", "UnsupportedRopeError", "build_gpt_model", "layer_spec", "load_checkpoint",
           "rope_kwargs", "transformer_config"]

log = logging.getLogger(__name__)

def transformer_config(spec: ModelSpec, parallel_cfg: Any = None, dtype: torch.dtype = torch.float32,
                       **overrides: Any) -> TransformerConfig:
    """Megatron ``TransformerConfig`` for ``spec``: RMSNorm, SwiGLU (gated fc1 = [gate; up]), GQA with
    ``num_query_groups = num_kv_heads``, no linear biases except the qkv bias of qwen2-style models.

    ``parallel_cfg`` is our ``ParallelConfig`` (or anything with ``tp``/``pp``/``cp``; None = all 1). ``dtype`` is
    the parameter dtype (fp32, bf16 or fp16). ``overrides`` go to ``TransformerConfig`` unchanged (e.g.
    ``recompute_granularity``)."""
    problems = spec.problems()
    if problems:
        raise ValueError("model spec: " + "; ".join(f"{k}: {m}" for k, m in problems))
    tp, pp, cp = (int(getattr(parallel_cfg, k, 1) or 1) for k in ("tp", "pp", "cp"))
    kwargs: dict[str, Any] = dict(
        num_layers=spec.num_layers, hidden_size=spec.hidden_size, ffn_hidden_size=spec.ffn_hidden_size,
        num_attention_heads=spec.num_heads, num_query_groups=spec.num_kv_heads, kv_channels=spec.head_dim,
        normalization="RMSNorm", layernorm_epsilon=spec.norm_eps, gated_linear_unit=True, activation_func=F.silu,
        add_bias_linear=False, add_qkv_bias=spec.qkv_bias, hidden_dropout=0.0, attention_dropout=0.0,
        bias_activation_fusion=False, bias_dropout_fusion=False, masked_softmax_fusion=False,
        apply_rope_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, context_parallel_size=cp,
        params_dtype=dtype, pipeline_dtype=dtype, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
    )
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def _local_spec(core_attention: type | None) -> ModuleSpec:
    return get_gpt_layer_local_spec(normalization="RMSNorm")


def _te_spec(core_attention: type | None) -> ModuleSpec:
    try:
        import transformer_engine  # noqa: F401
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec
    except ImportError as e:
        raise RuntimeError("layer_spec 'te' needs Transformer Engine (pip install lcrecipes[gpu]); "
                           "use layer_spec 'local' on machines without it") from e
    return get_gpt_layer_with_transformer_engine_spec()


LAYER_SPECS: dict[str, Callable[[type | None], ModuleSpec]] = {"local": _local_spec, "te": _te_spec}


def resolve_layer_spec_kind(kind: str) -> str:
    """``auto`` -> ``te`` when CUDA and Transformer Engine are present, else ``local``; other kinds unchanged."""
    if kind != "auto":
        return kind
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return "local"
    return "te" if torch.cuda.is_available() else "local"


def layer_spec(kind: str = "local", core_attention: type | None = None) -> ModuleSpec:
    """The transformer-layer ``ModuleSpec``: ``kind`` is ``te``, ``local`` or ``auto``. ``core_attention`` (a module
    class with Megatron's ``DotProductAttention`` constructor and ``forward(q, k, v, attention_mask, ...)``, q/k/v
    ``[seq, batch, heads, head_dim]``) replaces the spec's attention kernel when given."""
    kind = resolve_layer_spec_kind(kind)
    if kind not in LAYER_SPECS:
        raise ValueError(f"parallel.layer_spec: unknown kind {kind!r}; known: auto, {', '.join(sorted(LAYER_SPECS))}")
    spec = LAYER_SPECS[kind](core_attention)
    if core_attention is not None:
        spec.submodules.self_attention.submodules.core_attention = core_attention
    return spec


def _check_parallel(parallel_cfg: Any) -> SimpleNamespace:
    """TP/PP/CP sizes of the initialised Megatron groups, checked against ``parallel_cfg`` when given."""
    from megatron.core import parallel_state as ps

    live = SimpleNamespace(tp=ps.get_tensor_model_parallel_world_size(),
                           pp=ps.get_pipeline_model_parallel_world_size(), cp=ps.get_context_parallel_world_size())
    for k in ("tp", "pp", "cp") if parallel_cfg is not None else ():
        if int(getattr(parallel_cfg, k, 1) or 1) != getattr(live, k):
            raise ValueError(f"parallel.{k}={getattr(parallel_cfg, k)} but Megatron's groups were initialised "
                             f"with {k}={getattr(live, k)}")
    return live


def build_gpt_model(spec: ModelSpec, parallel_cfg: Any = None, dtype: torch.dtype = torch.float32, *,
                    kind: str = "local", core_attention: type | None = None, pre_process: bool | None = None,
                    post_process: bool | None = None, parallel_output: bool = True,
                    **config_overrides: Any) -> GPTModel:
    """A Megatron ``GPTModel`` for ``spec`` on this rank's TP/PP slice (groups must be initialised).

    ``parallel_cfg`` None takes TP/PP/CP from the initialised groups; a given one must match them.
    ``pre_process``/``post_process`` default to this rank being the first/last pipeline stage. With
    ``parallel_output=False`` the logits are gathered over TP: ``[batch, seq, vocab]``."""
    from megatron.core import parallel_state

    config = transformer_config(spec, _check_parallel(parallel_cfg), dtype, **config_overrides)
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    return GPTModel(
        config=config, transformer_layer_spec=layer_spec(kind, core_attention), vocab_size=spec.vocab_size,
        max_sequence_length=spec.max_position_embeddings, pre_process=pre_process, post_process=post_process,
        parallel_output=parallel_output, share_embeddings_and_output_weights=spec.tie_embeddings,
        **rope_kwargs(spec),
    )


def load_checkpoint(model: GPTModel, ckpt_dir: str | Path) -> None:
    """Load a ``dist_checkpointing`` checkpoint (saved at any TP/PP, or written by ``lcr convert --to megatron``)
    into this rank's ``model``. ``_extra_state`` objects the checkpoint lacks (e.g. Transformer Engine fp8
    metadata in a checkpoint converted from HF) keep their defaults; a missing tensor is an error."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from torch.distributed.checkpoint import FileSystemReader

    stored = FileSystemReader(str(ckpt_dir)).read_metadata().state_dict_metadata
    sharded = {k: v for k, v in model.sharded_state_dict().items()
               if not (isinstance(v, ShardedObject) and v.unique_key not in stored)}
    state = dist_checkpointing.load(sharded, str(ckpt_dir))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise KeyError(f"{ckpt_dir}: checkpoint does not fit the model: missing {missing[:5]}, "
                       f"unexpected {list(unexpected)[:5]}")
