"""Collectives for context-parallel attention, with exact autograd; work over gloo (CPU) and NCCL (GPU).

``group`` is a ``torch.distributed`` process group holding exactly the CP ranks, or None for the default group.
Tensors are laid out ``[tokens, heads, head_dim]`` (or ``[tokens, ...]``) unless stated otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from lcrecipes.parallel.layout import CPMeta, unshard

# torch 2.13 renamed the single-tensor collectives; fall back to the older names for other releases.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def group_size_rank(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """``(size, rank)`` of this process in ``group``; ``(1, 0)`` when torch.distributed is not initialised."""
    if not dist.is_available() or not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def global_rank(group: dist.ProcessGroup | None, group_rank: int) -> int:
    """Global rank of ``group_rank`` in ``group`` (needed by point-to-point calls)."""
    if group is None or group is dist.group.WORLD:
        return group_rank
    return dist.get_global_rank(group, group_rank)


def check_group(meta: CPMeta, group: dist.ProcessGroup | None) -> None:
    """Raise if ``meta`` was built for another CP size or rank than this process has in ``group``."""
    size, rank = group_size_rank(group) if meta.cp_size > 1 else (1, 0)
    if (size, rank) != (meta.cp_size, meta.cp_rank):
        raise ValueError(
            f"CPMeta is for cp_size={meta.cp_size}, cp_rank={meta.cp_rank} but this process is rank {rank} "
            f"of a group of {size}; build the meta with make_cp_meta(cu_seqlens, group size, group rank)"
        )


@dataclass
class PendingRecv:
    """An in-flight ring exchange: ``wait()`` returns the tensor received from the previous rank."""

    works: list
    buffer: torch.Tensor

    def wait(self) -> torch.Tensor:
        for work in self.works:
            work.wait()
        return self.buffer


def ring_send_recv(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> PendingRecv:
    """Send ``tensor`` to the next rank of the ring and receive the previous rank's tensor (same shape)."""
    size, rank = group_size_rank(group)
    buffer = torch.empty_like(tensor)
    ops = [
        dist.P2POp(dist.isend, tensor.contiguous(), global_rank(group, (rank + 1) % size), group),
        dist.P2POp(dist.irecv, buffer, global_rank(group, (rank - 1) % size), group),
    ]
    return PendingRecv(dist.batch_isend_irecv(ops), buffer)


class _AllGather(torch.autograd.Function):
    """All-gather along dim 0 (rank-major); backward reduce-scatters the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        size, _ = group_size_rank(group)
        out = x.new_empty((size * x.shape[0], *x.shape[1:]))
        _all_gather_single(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        size, _ = group_size_rank(ctx.group)
        out = grad.new_empty((grad.shape[0] // size, *grad.shape[1:]))
        _reduce_scatter_single(out, grad.contiguous(), group=ctx.group)
        return out, None


def all_gather_tokens(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """``[T_local, ...]`` on each rank -> ``[cp * T_local, ...]`` (rank 0's tokens first); differentiable."""
    return _AllGather.apply(x, group)


def _all_to_all(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """``x[j]`` goes to rank ``j``; ``out[j]`` comes from rank ``j``. ``x``: ``[cp, ...]``."""
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


def _seq_to_heads(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    size, _ = group_size_rank(group)
    t, h, d = x.shape
    parts = x.reshape(t, size, h // size, d).transpose(0, 1)  # [cp, T_local, H/cp, D]
    return _all_to_all(parts, group).reshape(size * t, h // size, d)


def _heads_to_seq(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    size, _ = group_size_rank(group)
    t, h, d = x.shape
    parts = _all_to_all(x.reshape(size, t // size, h, d), group)  # [cp, T_local, H/cp, D]
    return parts.transpose(0, 1).reshape(t // size, size * h, d)


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _seq_to_heads(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _heads_to_seq(grad, ctx.group), None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _heads_to_seq(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _seq_to_heads(grad, ctx.group), None


def seq_to_heads(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Ulysses all-to-all: ``[T_local, H, D]`` -> ``[cp * T_local, H / cp, D]``; rank ``j`` keeps heads
    ``[j * H / cp, (j + 1) * H / cp)`` of all tokens (rank-major token order). Differentiable."""
    return _SeqToHeads.apply(x, group)


def heads_to_seq(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Inverse of :func:`seq_to_heads`: ``[cp * T_local, H / cp, D]`` -> ``[T_local, H, D]``. Differentiable."""
    return _HeadsToSeq.apply(x, group)


@torch.no_grad()
def gather_unshard(
    x: torch.Tensor, meta: CPMeta, group: dist.ProcessGroup | None, dim: int = 0, padded: bool = False
) -> torch.Tensor:
    """Gather every rank's local ``x`` (``T_local`` along ``dim``) and return the packed sequence in its
    original (or, with ``padded``, padded) order on every rank. Not differentiable; for checks and logging."""
    if meta.cp_size == 1:
        return unshard([x], meta.cu_seqlens, dim=dim, padded=padded)
    moved = x.movedim(dim, 0).contiguous()
    gathered = all_gather_tokens(moved, group).chunk(meta.cp_size)
    return unshard(list(gathered), meta.cu_seqlens, dim=0, padded=padded).movedim(0, dim)
