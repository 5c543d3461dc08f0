"""From packed shard samples to this rank's micro-batch: labels, CP sharding, token counts.

A shard sample is one packed sequence: ``input_ids`` ``[T]``, ``loss_mask`` ``[T]`` (1 = the token is a loss
target), ``cu_seqlens`` ``[n_docs + 1]`` (see ``lcrecipes.data``). Several samples of one micro-batch are
concatenated into one packed sequence (documents never attend across samples either). The label of position
``t`` is token ``t + 1`` when that token is a target of the same document, else ``IGNORE`` (-100), so the first
token of a document is never predicted and nothing is predicted across a document boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lcrecipes.parallel.layout import CPMeta, make_cp_meta, shard

IGNORE = -100


@dataclass
class MicroBatch:
    """One rank's share of one packed sequence (``T_local`` tokens after the CP layout).

    ``input_ids``/``labels`` int64 ``[1, T_local]``; ``meta`` the CP layout of this rank; ``doc_lens`` the
    document lengths of the whole (unsharded) sequence in tokens, for the FLOPs count (``None`` on ranks that
    only replicate a sequence, see :func:`make_micro_batch`).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    meta: CPMeta
    doc_lens: list[int]

    @property
    def target_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    def to(self, device: torch.device) -> MicroBatch:
        return MicroBatch(self.input_ids.to(device), self.labels.to(device), self.meta.to(device), self.doc_lens)


def _tensor(x) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x).astype(np.int64)) if not isinstance(x, torch.Tensor) else x.long()


def concat_samples(samples: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Samples -> one packed sequence ``{"input_ids", "loss_mask", "cu_seqlens"}`` (int64 tensors)."""
    ids = [_tensor(s["input_ids"]).reshape(-1) for s in samples]
    masks = [_tensor(s["loss_mask"]).reshape(-1) for s in samples]
    cus, offset = [torch.zeros(1, dtype=torch.long)], 0
    for s, x in zip(samples, ids):
        cu = _tensor(s["cu_seqlens"]).reshape(-1)
        if int(cu[0]) != 0 or int(cu[-1]) != x.numel():
            raise ValueError(f"cu_seqlens {cu.tolist()} does not cover a sample of {x.numel()} tokens")
        cus.append(cu[1:] + offset)
        offset += x.numel()
    return {"input_ids": torch.cat(ids), "loss_mask": torch.cat(masks), "cu_seqlens": torch.cat(cus)}


def make_labels(input_ids: torch.Tensor, loss_mask: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """int64 ``[T]``: next token where it is a target of the same document, else ``IGNORE``."""
    labels = torch.full_like(input_ids, IGNORE)
    labels[:-1] = torch.where(loss_mask[1:].bool(), input_ids[1:], IGNORE)
    labels[cu_seqlens[1:] - 1] = IGNORE  # the last token of each document predicts nothing
    return labels


def make_micro_batch(samples: Sequence[dict], cp_size: int, cp_rank: int, replicate: bool = False) -> MicroBatch:
    """This rank's micro-batch of ``samples`` under CP size ``cp_size``.

    ``replicate=True`` is the CP=1 reference on a CP group (preflight): every rank of the group holds the whole
    sequence and only the group's first rank keeps its targets, so losses and gradients summed over the group
    equal one rank's at CP=1.
    """
    seq = concat_samples(samples)
    cu = seq["cu_seqlens"]
    labels = make_labels(seq["input_ids"], seq["loss_mask"], cu)
    size, rank = (1, 0) if replicate else (cp_size, cp_rank)
    meta = make_cp_meta(cu, size, rank)
    ids = shard(seq["input_ids"], cu, size, rank, pad_value=0)
    lab = shard(labels, cu, size, rank, pad_value=IGNORE)
    if replicate and cp_rank != 0:
        lab = torch.full_like(lab, IGNORE)
    doc_lens = (cu[1:] - cu[:-1]).tolist()
    return MicroBatch(ids[None], lab[None], meta, doc_lens)
