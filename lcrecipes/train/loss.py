"""Loss reduction, the same for every backend (DESIGN contract 7).

The loss of an optimizer step is the sum of target-token losses over every micro-batch of every DP and CP rank,
divided by the global number of target tokens of that step (never a mean of per-rank means). A rank whose chunk
holds no target tokens contributes a loss sum of 0 (and gradient 0), never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lcrecipes.train.batch import IGNORE, MicroBatch


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross entropies (nats) over target positions; 0 when there are none.

    ``logits`` ``[1, T, V]`` (any float dtype; computed in fp32), ``labels`` int64 ``[1, T]`` with ``IGNORE``.
    """
    flat = logits.reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE, reduction="sum")


def _all_reduce_sum(values: list[float], group: dist.ProcessGroup | None = None) -> list[float]:
    """Sum over ranks in float64 (exact for token counts < 2**53)."""
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        backend = dist.get_backend(group)
        if backend == "nccl":
            t = t.cuda()
        dist.all_reduce(t, group=group)
    return t.cpu().tolist()


def global_target_tokens(micro_batches: Sequence[MicroBatch], group: dist.ProcessGroup | None = None) -> int:
    """Target tokens of one optimizer step summed over all micro-batches and ranks of ``group`` (all: DP x CP)."""
    return int(_all_reduce_sum([float(sum(mb.target_tokens for mb in micro_batches))], group)[0])


def loss_weight(global_tokens: int) -> float:
    """The factor each rank multiplies its loss sum by: ``1 / global_tokens`` (1 when there are none)."""
    return 1.0 / max(global_tokens, 1)


def reduce_sums(values: list[float], group: dist.ProcessGroup | None = None) -> list[float]:
    """Global sums of per-rank sums (loss sums, token counts, FLOPs) for logging."""
    return _all_reduce_sum(values, group)
