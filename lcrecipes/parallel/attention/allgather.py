"""``allgather``: all-gather K/V of all ranks, attend locally; backward reduce-scatters dK/dV.

Memory: every rank holds the whole sequence's K/V (``cp * T_local * H_kv * D * 2`` values).
"""

from __future__ import annotations

import torch

from lcrecipes.parallel.attention.base import CPAttention
from lcrecipes.parallel.attention.kernels import dense_attention
from lcrecipes.parallel.attention.registry import register_attention
from lcrecipes.parallel.comm import all_gather_tokens


@register_attention
class AllGatherAttention(CPAttention):
    name = "allgather"

    def forward(self, q, k, v, meta, group, *, scale, causal):
        if meta.cp_size == 1:
            return dense_attention(q, k, v, meta.tokens(), meta.tokens(), causal, scale)
        d = k.shape[-1]
        kv = all_gather_tokens(torch.cat([k, v], dim=-1), group)  # [cp * T_local, H_kv, 2 D], rank-major
        return dense_attention(q, kv[..., :d], kv[..., d:], meta.tokens(), meta.all_tokens(), causal, scale)
