"""``ulysses``: all-to-all from sequence shards to head shards, document-aware attention over the whole
sequence for ``H / cp`` heads, all-to-all back. Needs ``H % cp == 0``; when ``H_kv % cp != 0`` the K/V heads are
repeated to ``H`` first (GQA kept exact). Unlike DeepSpeed's HF wrapper with sdpa, the document mask is applied,
so no token attends across documents."""

from __future__ import annotations

import torch

from lcrecipes.parallel.attention.base import CPAttention
from lcrecipes.parallel.attention.kernels import dense_attention
from lcrecipes.parallel.attention.registry import register_attention
from lcrecipes.parallel.comm import heads_to_seq, seq_to_heads


@register_attention
class UlyssesAttention(CPAttention):
    name = "ulysses"

    def forward(self, q, k, v, meta, group, *, scale, causal):
        cp, heads, kv_heads, d = meta.cp_size, q.shape[1], k.shape[1], q.shape[2]
        if cp == 1:
            return dense_attention(q, k, v, meta.tokens(), meta.tokens(), causal, scale)
        if heads % cp:
            raise ValueError(f"ulysses needs query heads ({heads}) divisible by cp_size ({cp})")
        if kv_heads % cp:
            k, v = (x.repeat_interleave(heads // kv_heads, dim=1) for x in (k, v))
        qh = seq_to_heads(q, group)  # [cp * T_local, H / cp, D]
        kvh = seq_to_heads(torch.cat([k, v], dim=-1), group)  # [cp * T_local, H_kv / cp, 2 D]
        tokens = meta.all_tokens()
        out = dense_attention(qh, kvh[..., :d], kvh[..., d:], tokens, tokens, causal, scale)
        return heads_to_seq(out, group)
