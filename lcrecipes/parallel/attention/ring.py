"""``ring``: K/V blocks travel rank to rank (point-to-point isend/irecv); each rank attends its queries to every
block under the per-document causal mask and merges the partial results by log-sum-exp.

Forward, ``cp`` steps: at step ``i`` rank ``r`` holds the K/V of rank ``(r - i) % cp`` and already sends it on
to rank ``r + 1`` while computing. Backward (exact, custom autograd): the K/V blocks go round again, each with a
dK/dV accumulator that every rank adds its share to; after ``cp`` hops the accumulator is home. Blocks, or query
chunks, that the mask hides entirely are skipped (the zigzag layout balances the remaining work across ranks).
Partial results, merges and gradient accumulators are fp32 whatever the input dtype.
"""

from __future__ import annotations

import torch

from lcrecipes.parallel.attention.base import CPAttention
from lcrecipes.parallel.attention.kernels import block_backward, block_forward, merge_into
from lcrecipes.parallel.attention.registry import register_attention
from lcrecipes.parallel.comm import ring_send_recv


def _split_kv(kv: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    return kv[..., :d], kv[..., d:]


def ring_forward(q, k, v, meta, group, scale, causal, kernel="auto"):
    """fp32 ``out [T_local, H, D]`` and ``lse [T_local, H]`` of this rank's queries over all ranks' keys."""
    cp, rank, d = meta.cp_size, meta.cp_rank, q.shape[-1]
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:2], float("-inf"), dtype=torch.float32, device=q.device)
    kv = torch.cat([k, v], dim=-1).contiguous()  # [T_local, H_kv, 2 D]
    queries = meta.tokens()
    for step in range(cp):
        pending = ring_send_recv(kv, group) if step < cp - 1 else None
        k_s, v_s = _split_kv(kv, d)
        block = block_forward(q, k_s, v_s, queries, meta.tokens((rank - step) % cp), causal, scale, kernel)
        merge_into(out, lse, *block)
        kv = pending.wait() if pending is not None else kv
    return out, lse


def ring_backward(q, k, v, out, lse, dout, meta, group, scale, causal):
    """fp32 ``dq [T_local, H, D]``, ``dk``, ``dv [T_local, H_kv, D]`` of the global loss."""
    cp, rank, d = meta.cp_size, meta.cp_rank, q.shape[-1]
    delta = (dout.float() * out).sum(dim=-1)  # [T_local, H]
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    kv = torch.cat([k, v], dim=-1).contiguous()
    dkv = torch.zeros(kv.shape, dtype=torch.float32, device=q.device)  # travels with kv
    queries = meta.tokens()
    for step in range(cp):
        pending = ring_send_recv(kv, group) if step < cp - 1 else None
        k_s, v_s = _split_kv(kv, d)
        keys = meta.tokens((rank - step) % cp)
        dq_s, dk_s, dv_s = block_backward(q, k_s, v_s, dout, lse, delta, queries, keys, causal, scale)
        dq += dq_s
        dkv += torch.cat([dk_s, dv_s], dim=-1)
        kv = pending.wait() if pending is not None else kv
        dkv = ring_send_recv(dkv, group).wait() if cp > 1 else dkv
    return dq, *_split_kv(dkv, d)


class _RingAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, meta, group, scale, causal):
        out, lse = ring_forward(q, k, v, meta, group, scale, causal)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.meta, ctx.group, ctx.scale, ctx.causal = meta, group, scale, causal
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ring_backward(q, k, v, out, lse, dout, ctx.meta, ctx.group, ctx.scale, ctx.causal)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


@register_attention
class RingAttention(CPAttention):
    name = "ring"

    def forward(self, q, k, v, meta, group, *, scale, causal):
        return _RingAttentionFn.apply(q, k, v, meta, group, scale, causal)
