"""Attention kernels shared by the CP implementations: pure torch, any device.

Shapes: ``q`` ``[T_q, H, D]``, ``k``/``v`` ``[T_k, H_kv, D]`` with ``H % H_kv == 0`` (GQA: query head ``h`` uses
key/value head ``h // (H / H_kv)``, as transformers' ``repeat_kv``), log-sum-exp ``lse`` ``[T_q, H]`` in fp32
(natural log of the softmax normaliser; ``-inf`` for a query that sees no key). Masks come from
:meth:`TokenInfo.mask_for` (bool ``[T_q, T_k]``, True = may attend).

``block_forward`` returns the partial result ``(out, lse)`` of one key block (``out`` normalised within the
block), in fp32, for the ring's log-sum-exp merge; ``block_backward`` gives that block's share of the gradients
from the final (merged) ``out`` and ``lse``, as in FlashAttention's backward. Both walk the queries in chunks of
``chunk`` rows to bound memory at ``H * chunk * T_k`` fp32 scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lcrecipes.parallel.layout import TokenInfo

QUERY_CHUNK = 2048
"""Query rows per chunk in the block kernels; scores take ``4 * H * QUERY_CHUNK * T_k`` bytes."""


def _safe(lse: torch.Tensor) -> torch.Tensor:
    """``lse`` with ``-inf`` (no visible key) replaced by 0, so ``exp(s - lse)`` is 0 instead of NaN there."""
    return torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)


def _grouped(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """``[T, H, D]`` -> fp32 ``[T, H_kv, G, D]``."""
    t, h, d = x.shape
    return x.float().reshape(t, kv_heads, h // kv_heads, d)


def _scores(q_grouped: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``[c, H_kv, G, D]`` x ``[T_k, H_kv, D]`` -> fp32 scores ``[H_kv, G, c, T_k]``."""
    return torch.einsum("qhgd,khd->hgqk", q_grouped, k) * scale


def _lse_to_grouped(lse: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """``[c, H]`` -> ``[H_kv, G, c]``."""
    c, h = lse.shape
    return lse.reshape(c, kv_heads, h // kv_heads).permute(1, 2, 0)


def _math_forward(q, k, v, qinfo, kinfo, causal, scale, chunk):
    tq, h, d = q.shape
    kv_heads = k.shape[1]
    qg, kf, vf = _grouped(q, kv_heads), k.float(), v.float()
    out = torch.zeros(tq, h, d, dtype=torch.float32, device=q.device)
    lse = torch.full((tq, h), float("-inf"), dtype=torch.float32, device=q.device)
    for start in range(0, tq, chunk):
        end = min(start + chunk, tq)
        mask = qinfo.slice(start, end).mask_for(kinfo, causal)
        if not bool(mask.any()):
            continue
        s = _scores(qg[start:end], kf, scale).masked_fill(~mask, float("-inf"))
        m = torch.logsumexp(s, dim=-1)  # [H_kv, G, c]
        p = torch.exp(s - _safe(m)[..., None])
        out[start:end] = torch.einsum("hgqk,khd->qhgd", p, vf).reshape(end - start, h, d)
        lse[start:end] = m.permute(2, 0, 1).reshape(end - start, h)
    return out, lse


def _cpu_flash_forward(q, k, v, qinfo, kinfo, causal, scale, chunk):
    """The fused CPU kernel. It wants a float mask (0 / -inf, dtype of q) and, for a query row that sees no key,
    returns out 0 and lse 0 rather than -inf; we set those rows' lse to -inf so the merge ignores them."""
    tq, h, d = q.shape
    group = h // k.shape[1]
    kf = k.float().repeat_interleave(group, dim=1).transpose(0, 1)[None].contiguous()
    vf = v.float().repeat_interleave(group, dim=1).transpose(0, 1)[None].contiguous()
    out = torch.zeros(tq, h, d, dtype=torch.float32, device=q.device)
    lse = torch.full((tq, h), float("-inf"), dtype=torch.float32, device=q.device)
    for start in range(0, tq, chunk):
        end = min(start + chunk, tq)
        mask = qinfo.slice(start, end).mask_for(kinfo, causal)
        if not bool(mask.any()):
            continue
        bias = torch.zeros(mask.shape, dtype=torch.float32, device=q.device).masked_fill(~mask, float("-inf"))
        qf = q[start:end].float().transpose(0, 1)[None].contiguous()
        o, m = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qf, kf, vf, attn_mask=bias, scale=scale)
        empty = ~mask.any(dim=-1)  # [c]
        out[start:end] = o[0].transpose(0, 1).masked_fill(empty[:, None, None], 0.0)
        lse[start:end] = m[0].transpose(0, 1).masked_fill(empty[:, None], float("-inf"))
    return out, lse


BLOCK_FORWARDS = {"math": _math_forward, "cpu_flash": _cpu_flash_forward}


def block_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qinfo: TokenInfo,
    kinfo: TokenInfo,
    causal: bool,
    scale: float,
    kernel: str = "auto",
    chunk: int = QUERY_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q`` over one key block: fp32 ``out [T_q, H, D]`` (normalised within the block) and fp32
    ``lse [T_q, H]``. ``kernel``: "math", "cpu_flash" (CPU tensors only) or "auto" (cpu_flash on CPU)."""
    if kernel == "auto":
        kernel = "cpu_flash" if q.device.type == "cpu" else "math"
    if kernel not in BLOCK_FORWARDS:
        raise ValueError(f"unknown block kernel {kernel!r}; known: {sorted(BLOCK_FORWARDS)}")
    return BLOCK_FORWARDS[kernel](q, k, v, qinfo, kinfo, causal, scale, chunk)


def merge_into(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor) -> None:
    """Fold a block's partial ``(block_out, block_lse)`` into the running fp32 ``(out, lse)`` in place."""
    new_lse = torch.logaddexp(lse, block_lse)
    safe = _safe(new_lse)
    out.mul_(torch.exp(lse - safe)[..., None]).add_(block_out * torch.exp(block_lse - safe)[..., None])
    lse.copy_(new_lse)


def block_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dout: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    qinfo: TokenInfo,
    kinfo: TokenInfo,
    causal: bool,
    scale: float,
    chunk: int = QUERY_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One key block's share of the gradients, given the final ``lse`` ``[T_q, H]`` and
    ``delta = (dout * out).sum(-1)`` ``[T_q, H]`` of the merged output. Returns fp32 ``dq [T_q, H, D]``,
    ``dk [T_k, H_kv, D]``, ``dv [T_k, H_kv, D]``."""
    tq, h, d = q.shape
    kv_heads = k.shape[1]
    qg, dog, kf, vf = _grouped(q, kv_heads), _grouped(dout, kv_heads), k.float(), v.float()
    dq = torch.zeros(tq, h, d, dtype=torch.float32, device=q.device)
    dk, dv = torch.zeros_like(kf), torch.zeros_like(vf)
    for start in range(0, tq, chunk):
        end = min(start + chunk, tq)
        mask = qinfo.slice(start, end).mask_for(kinfo, causal)
        if not bool(mask.any()):
            continue
        s = _scores(qg[start:end], kf, scale).masked_fill(~mask, float("-inf"))
        p = torch.exp(s - _safe(_lse_to_grouped(lse[start:end], kv_heads))[..., None])
        do = dog[start:end]
        dv += torch.einsum("hgqk,qhgd->khd", p, do)
        dp = torch.einsum("qhgd,khd->hgqk", do, vf)
        ds = p * (dp - _lse_to_grouped(delta[start:end], kv_heads)[..., None])
        dq[start:end] = torch.einsum("hgqk,khd->qhgd", ds, kf).reshape(end - start, h, d) * scale
        dk += torch.einsum("hgqk,qhgd->khd", ds, qg[start:end]) * scale
    return dq, dk, dv


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qinfo: TokenInfo,
    kinfo: TokenInfo,
    causal: bool,
    scale: float,
) -> torch.Tensor:
    """Masked attention through ``torch.nn.functional.scaled_dot_product_attention`` (autograd by torch).

    ``[T_q, H, D]`` x ``[T_k, H_kv, D]`` -> ``[T_q, H, D]`` in the dtype of ``q``. Every query row must see at
    least one key (true for CP layouts: a token always sees position 0 of its own document).
    """
    mask = qinfo.mask_for(kinfo, causal)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        attn_mask=mask,
        scale=scale,
        enable_gqa=k.shape[1] != q.shape[1],
    )
    return out[0].transpose(0, 1)
