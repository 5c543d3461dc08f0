"""Our portable CP attention as Megatron-Core's ``core_attention``, and the packed-sequence parameters that carry
this rank's CP layout (:class:`~lcrecipes.parallel.layout.CPMeta`) down to it.

Megatron passes ``packed_seq_params`` from ``GPTModel.forward`` to every layer's ``core_attention``; with
``qkv_format="thd"`` and ``cu_seqlens_q_padded`` = our padded boundaries, Megatron's own RoPE applies the zigzag
positions of the CP layout (the Megatron / Transformer Engine convention we share), and ``core_attention`` receives
``q`` ``[T_local, H_local, D]`` (batch squeezed). The meta rides on :class:`CPPackedSeqParams` (no model signature
changes). The Transformer Engine spec reads the same ``cu_seqlens`` fields and ignores ``meta``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.module import MegatronModule

from lcrecipes.parallel.layout import CPMeta


@dataclass
class CPPackedSeqParams(PackedSeqParams):
    """Megatron's THD packed-sequence parameters plus our per-batch ``meta`` (this rank's CP layout)."""

    meta: CPMeta | None = None


def packed_seq_params(meta: CPMeta, cp_group) -> CPPackedSeqParams:
    """THD parameters of one packed sequence: ``cu_seqlens`` original, ``*_padded`` padded to ``2 * cp``
    (global, in tokens), ``max_seqlen`` the longest padded document (RoPE table length)."""
    padded = meta.cu_seqlens_padded
    longest = int((padded[1:] - padded[:-1]).max()) if padded.numel() > 1 else 1
    return CPPackedSeqParams(qkv_format="thd", cu_seqlens_q=meta.cu_seqlens, cu_seqlens_kv=meta.cu_seqlens,
                             cu_seqlens_q_padded=padded, cu_seqlens_kv_padded=padded, max_seqlen_q=longest,
                             max_seqlen_kv=longest, cp_group=cp_group, meta=meta)


class PortableCoreAttention(MegatronModule):
    """``core_attention`` running ``lcrecipes.parallel.attention`` implementation ``attention_name`` (set by
    :func:`core_attention_for`); constructor as Megatron's ``DotProductAttention``."""

    attention_name = ""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None):
        super().__init__(config=config)
        from megatron.core import parallel_state

        if (attention_dropout if attention_dropout is not None else config.attention_dropout) > 0:
            raise ValueError("the portable core_attention has no dropout; set attention_dropout=0")
        self.scale = softmax_scale
        self.cp_group = pg_collection.cp if pg_collection is not None else parallel_state.get_context_parallel_group()

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        """``query`` ``[T, H, D]`` (THD) or ``[T, 1, H, D]``; ``key``/``value`` with ``H_kv`` heads ->
        ``[T, 1, H * D]``. Needs ``packed_seq_params`` from :func:`packed_seq_params`."""
        from lcrecipes.parallel.attention import get_attention

        meta = getattr(packed_seq_params, "meta", None)
        if meta is None:
            raise ValueError("PortableCoreAttention needs packed_seq_params=packed_seq_params(meta, group)")
        if attention_bias is not None:
            raise ValueError("PortableCoreAttention does not take an attention_bias")
        q, k, v = (x.squeeze(1) if x.ndim == 4 else x for x in (query, key, value))
        group = self.cp_group if meta.cp_size > 1 else None
        out = get_attention(self.attention_name)(q, k, v, meta, group, scale=self.scale, causal=True)
        return out.reshape(out.shape[0], 1, -1)


_CLASSES: dict[str, type[PortableCoreAttention]] = {}


def core_attention_for(name: str) -> type[PortableCoreAttention]:
    """The ``core_attention`` class for CP attention ``name`` (one class per name, reused)."""
    from lcrecipes.parallel.attention import get_attention

    get_attention(name)  # unknown names fail here, with the registry's message
    if name not in _CLASSES:
        _CLASSES[name] = type(f"PortableCoreAttention_{name}", (PortableCoreAttention,), {"attention_name": name})
    return _CLASSES[name]


def position_ids(meta: CPMeta) -> torch.Tensor:
    """int64 ``[1, T_local]`` positions within documents (GPTModel's argument; RoPE reads the THD params)."""
    return meta.position_ids[None]
