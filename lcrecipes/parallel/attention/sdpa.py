"""``sdpa``: the single-rank reference, torch SDPA with per-document causal masks (``cp_size == 1`` only)."""

from __future__ import annotations

from lcrecipes.parallel.attention.base import CPAttention
from lcrecipes.parallel.attention.kernels import dense_attention
from lcrecipes.parallel.attention.registry import register_attention


@register_attention
class SDPAAttention(CPAttention):
    name = "sdpa"

    def forward(self, q, k, v, meta, group, *, scale, causal):
        if meta.cp_size != 1:
            raise ValueError(f"'sdpa' is single-rank (cp_size 1), got cp_size={meta.cp_size}; use ring/ulysses")
        tokens = meta.tokens()
        return dense_attention(q, k, v, tokens, tokens, causal, scale)
