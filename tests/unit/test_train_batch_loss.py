"""Micro-batches (labels, packing of samples, CP shards), loss reduction and the LR schedule, single process."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lcrecipes.config import TrainConfig
from lcrecipes.parallel.layout import shard, unshard
from lcrecipes.train.batch import IGNORE, concat_samples, make_labels, make_micro_batch
from lcrecipes.train.loss import global_target_tokens, loss_weight, token_loss_sum
from lcrecipes.train.schedule import lr_at


def _sample(lens: list[int], targets: list[tuple[int, int]], seed: int = 0) -> dict:
    """A packed sequence of documents ``lens``; ``targets`` are (start, end) target ranges (absolute)."""
    g = torch.Generator().manual_seed(seed)
    total = sum(lens)
    mask = torch.zeros(total, dtype=torch.bool)
    for a, b in targets:
        mask[a:b] = True
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return {"input_ids": torch.randint(1, 50, (total,), generator=g), "loss_mask": mask, "cu_seqlens": cu}


def test_labels_predict_next_target_token_within_its_document() -> None:
    s = _sample([4, 3], [(0, 7)])
    labels = make_labels(s["input_ids"], s["loss_mask"].long(), s["cu_seqlens"].long())
    ids = s["input_ids"]
    assert labels.tolist() == [*ids[1:4].tolist(), IGNORE, *ids[5:7].tolist(), IGNORE]  # doc starts unpredicted


def test_labels_follow_the_loss_mask() -> None:
    s = _sample([6], [(3, 5)])
    labels = make_labels(s["input_ids"], s["loss_mask"].long(), s["cu_seqlens"].long())
    assert (labels != IGNORE).nonzero().flatten().tolist() == [2, 3]  # predicting tokens 3 and 4


def test_concat_samples_offsets_boundaries_and_rejects_bad_ones() -> None:
    a, b = _sample([3, 5], [(0, 8)]), _sample([8], [(0, 8)], seed=1)
    seq = concat_samples([a, b])
    assert seq["cu_seqlens"].tolist() == [0, 3, 8, 16] and seq["input_ids"].numel() == 16
    bad = {**b, "cu_seqlens": torch.tensor([0, 7])}
    with pytest.raises(ValueError, match="does not cover"):
        concat_samples([bad])


@pytest.mark.parametrize("cp", [2, 4])
def test_cp_shards_hold_exactly_the_cp1_targets(cp: int) -> None:
    s = _sample([13, 6, 21], [(2, 13), (15, 19), (25, 40)])
    ref = make_micro_batch([s], 1, 0)
    parts = [make_micro_batch([s], cp, r) for r in range(cp)]
    assert sum(p.target_tokens for p in parts) == ref.target_tokens
    cu = s["cu_seqlens"]
    labels = unshard([p.labels[0] for p in parts], cu)
    ids = unshard([p.input_ids[0] for p in parts], cu)
    assert torch.equal(labels, unshard([ref.labels[0]], cu)) and torch.equal(ids, s["input_ids"])
    assert all(p.doc_lens == [13, 6, 21] for p in parts)
    assert torch.equal(parts[1].meta.position_ids, parts[1].meta.positions_all[1])


def test_replicated_reference_keeps_targets_on_the_first_cp_rank_only() -> None:
    s = _sample([10, 6], [(0, 16)])
    r0, r1 = (make_micro_batch([s], 2, r, replicate=True) for r in (0, 1))
    assert r0.meta.cp_size == 1 and torch.equal(r0.input_ids, r1.input_ids)
    assert r0.target_tokens == make_micro_batch([s], 1, 0).target_tokens and r1.target_tokens == 0


def test_loss_sum_of_no_targets_is_zero_with_zero_gradient() -> None:
    logits = torch.randn(1, 5, 11, requires_grad=True)
    loss = token_loss_sum(logits, torch.full((1, 5), IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and not torch.isnan(logits.grad).any() and logits.grad.abs().sum() == 0


def test_global_normalisation_equals_the_token_mean_not_a_mean_of_means() -> None:
    s = _sample([9, 7], [(1, 3), (11, 16)])
    ref = make_micro_batch([s], 1, 0)
    logits_full = torch.randn(1, ref.input_ids.shape[1], 50)
    mean = F.cross_entropy(logits_full[0], ref.labels[0], ignore_index=IGNORE)
    parts = [make_micro_batch([s], 2, r) for r in range(2)]
    cu = s["cu_seqlens"]
    full = unshard([logits_full[0]], ref.meta.cu_seqlens)  # back to the original order, then shard per rank
    sums = [token_loss_sum(shard(full, cu, 2, r)[None], p.labels) for r, p in enumerate(parts)]
    tokens = global_target_tokens(parts[:1]) + global_target_tokens(parts[1:])  # no process group: local sums
    assert torch.allclose(sum(sums) * loss_weight(tokens), mean, atol=1e-6)
    per_rank = [x / max(p.target_tokens, 1) for x, p in zip(sums, parts)]
    assert parts[0].target_tokens != parts[1].target_tokens
    assert not torch.allclose(sum(per_rank) / 2, mean, atol=1e-4)  # what contract 7 forbids
    assert loss_weight(0) == 1.0


def test_lr_warmup_then_cosine_linear_constant() -> None:
    cfg = TrainConfig(steps=11, lr=1.0, min_lr=0.1, warmup_steps=2, schedule="cosine")
    assert [lr_at(s, cfg) for s in (0, 1)] == [0.5, 1.0]
    assert lr_at(2, cfg) == pytest.approx(1.0) and lr_at(10, cfg) == pytest.approx(0.1)
    assert lr_at(6, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(6, TrainConfig(steps=11, lr=1.0, min_lr=0.1, warmup_steps=2, schedule="linear")) == \
        pytest.approx(0.55)
    assert lr_at(9, TrainConfig(steps=11, lr=1.0, min_lr=0.1, warmup_steps=0, schedule="constant")) == 1.0
