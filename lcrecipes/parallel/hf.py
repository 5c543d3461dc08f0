"""Context-parallel attention inside transformers models, without editing model code.

    register_hf_attentions()                          # once per process: "lcr_sdpa", "lcr_ring", ...
    model.set_attn_implementation(hf_name("ring"))
    meta = make_cp_meta(cu_seqlens, cp_size, cp_rank)
    input_ids = shard(tokens, cu_seqlens, cp_size, cp_rank, dim=-1)          # [1, T_local]
    logits = model(input_ids=input_ids, **cp_forward_kwargs(meta, group)).logits

How the pieces fit transformers 5.2:
- The layout metadata travels as forward kwargs (``cp_meta``, ``cp_group``): transformers hands a model's extra
  forward kwargs down through every decoder layer to the attention function. No global state.
- ``create_causal_mask`` builds no mask for implementation names it has no mask function for (``lcr_*``), so the
  model's own mask never fights ours and its ``position_ids``-based packing detection is not used; documents are
  separated by ``cp_meta`` alone. A 4-D ``attention_mask`` passed by the caller is rejected.
- ``position_ids`` must be the per-document positions of the local tokens (``meta.position_ids``) for RoPE; the
  attention function checks that they are. ``use_cache=False``: a packed batch is a training/scoring forward, and
  transformers' own sdpa/eager only honour packed ``position_ids`` without a cache (see the tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from lcrecipes.parallel.attention import available_attentions, get_attention
from lcrecipes.parallel.layout import CPMeta

HF_PREFIX = "lcr_"


def hf_name(impl: str) -> str:
    """The transformers attention-implementation name of CP attention ``impl`` (e.g. "ring" -> "lcr_ring")."""
    return HF_PREFIX + impl


def cp_forward_kwargs(meta: CPMeta, group: dist.ProcessGroup | None = None) -> dict[str, Any]:
    """Keyword arguments for ``model(input_ids=..., **cp_forward_kwargs(meta, group))``."""
    return {"position_ids": meta.position_ids[None], "use_cache": False, "cp_meta": meta, "cp_group": group}


def _check_call(query: torch.Tensor, attention_mask, dropout: float, meta, position_ids) -> None:
    if meta is None:
        raise ValueError("CP attention needs cp_meta=...: call the model with **cp_forward_kwargs(meta, group)")
    if query.shape[0] != 1:
        raise ValueError(f"CP attention takes one packed sequence per call (batch 1), got batch {query.shape[0]}")
    if attention_mask is not None:
        raise ValueError("CP attention masks documents from cp_meta; do not pass a 4-D attention_mask")
    if dropout:
        raise ValueError(f"CP attention has no attention dropout, got dropout={dropout}")
    if position_ids is not None and not torch.equal(position_ids.reshape(-1), meta.position_ids):
        raise ValueError("position_ids differ from cp_meta.position_ids; pass position_ids=meta.position_ids[None]")


def make_hf_attention(impl: str) -> Callable[..., tuple[torch.Tensor, None]]:
    """A transformers attention function running CP attention ``impl``.

    Called by the model as ``fn(module, query, key, value, attention_mask, dropout=, scaling=, **kwargs)`` with
    query ``[1, H, T_local, D]``, key/value ``[1, H_kv, T_local, D]``; returns ``([1, T_local, H, D], None)``.
    """
    attention = get_attention(impl)

    def forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        meta, group = kwargs.get("cp_meta"), kwargs.get("cp_group")
        _check_call(query, attention_mask, dropout, meta, kwargs.get("position_ids"))
        causal = kwargs.get("is_causal") if kwargs.get("is_causal") is not None else module.is_causal
        q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T_local, heads, D]
        out = attention(q, k, v, meta, group, scale=scaling, causal=causal)
        return out[None], None

    forward.__name__ = f"{hf_name(impl)}_attention_forward"
    return forward


def register_hf_attentions() -> list[str]:
    """Register every CP attention with transformers' ``AttentionInterface``; returns the names registered."""
    from transformers import AttentionInterface

    names = []
    for impl in available_attentions():
        AttentionInterface.register(hf_name(impl), make_hf_attention(impl))
        names.append(hf_name(impl))
    return names
