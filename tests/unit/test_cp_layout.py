"""The zigzag per-document CP layout: shard/unshard are exact inverses, short documents, metadata fields."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lcrecipes.parallel.layout import (
    make_cp_meta,
    pad_cu_seqlens,
    padded_cu_seqlens,
    shard,
    unshard,
    zigzag_positions,
)


def _cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths, dtype=torch.long).cumsum(0).tolist()], dtype=torch.int32)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=23), min_size=1, max_size=5),
    cp_size=st.sampled_from([1, 2, 4]),
    dim=st.sampled_from([0, 1]),
)
def test_shard_unshard_are_inverses(lengths, cp_size, dim):
    cu = _cu(lengths)
    total, total_padded = int(cu[-1]), int(padded_cu_seqlens(cu, cp_size)[-1])
    x = torch.randn(total, 3) if dim == 0 else torch.randn(2, total)
    pieces = [shard(x, cu, cp_size, r, dim=dim) for r in range(cp_size)]
    assert all(p.shape[dim] == total_padded // cp_size for p in pieces)
    assert torch.equal(unshard(pieces, cu, dim=dim), x)
    padded = unshard(pieces, cu, dim=dim, padded=True)
    assert padded.shape[dim] == total_padded
    cu_pad = padded_cu_seqlens(cu, cp_size).long()
    for i, n in enumerate(lengths):  # each document sits at the start of its padded slot, zeros after it
        doc = padded.narrow(dim, int(cu_pad[i]), int(cu_pad[i + 1] - cu_pad[i]))
        assert torch.equal(doc.narrow(dim, 0, n), x.narrow(dim, int(cu[i]), n))
        assert not doc.narrow(dim, n, doc.shape[dim] - n).any()


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(0, 30), min_size=1, max_size=4), cp_size=st.sampled_from([1, 2, 4]))
def test_every_token_kept_by_exactly_one_rank_with_balanced_work(lengths, cp_size):
    cu = _cu(lengths)
    infos = [zigzag_positions(cu, cp_size, r) for r in range(cp_size)]
    index = torch.cat([i["global_index"] for i in infos]).sort().values
    assert torch.equal(index, torch.arange(int(padded_cu_seqlens(cu, cp_size)[-1])))
    source = torch.cat([i["source_index"] for i in infos])
    assert torch.equal(source[source >= 0].sort().values, torch.arange(int(cu[-1])))
    # zigzag: per document, chunk positions of rank r and 2C-1-r sum to a constant -> same causal work per rank
    work = [int((i["positions"] + 1).sum()) for i in infos]
    assert len(set(work)) == 1


def test_document_shorter_than_two_cp():
    cu = torch.tensor([0, 3, 4], dtype=torch.int32)  # lengths 3 and 1, both < 2 * cp = 4
    rank0, rank1 = (zigzag_positions(cu, 2, r) for r in range(2))
    assert rank0["positions"].tolist() == [0, 3, 0, 3] and rank1["positions"].tolist() == [1, 2, 1, 2]
    assert rank0["doc_ids"].tolist() == [0, 0, 1, 1]
    assert rank0["valid"].tolist() == [True, False, True, False]
    assert rank1["valid"].tolist() == [True, True, False, False]
    assert rank0["global_index"].tolist() == [0, 3, 4, 7]
    x = torch.tensor([10, 11, 12, 13])
    assert shard(x, cu, 2, 0, pad_value=-100).tolist() == [10, -100, 13, -100]
    assert shard(x, cu, 2, 1, pad_value=-100).tolist() == [11, 12, -100, -100]
    assert unshard([shard(x, cu, 2, r) for r in range(2)], cu).tolist() == [10, 11, 12, 13]


def test_meta_fields():
    cu = torch.tensor([0, 5, 6, 19], dtype=torch.int32)
    meta = make_cp_meta(cu, cp_size=2, cp_rank=1)
    assert meta.cu_seqlens_padded.tolist() == [0, 8, 12, 28]
    assert meta.local_cu_seqlens.tolist() == [0, 4, 6, 14]
    assert meta.cu_seqlens_padded.dtype == torch.int32 and meta.local_cu_seqlens.dtype == torch.int32
    assert meta.num_local_tokens == 14
    assert meta.position_ids[:4].tolist() == [2, 3, 4, 5]  # doc 0: chunks 1 and 2 of size 2
    assert meta.valid[:4].tolist() == [True, True, True, False]  # position 5 is padding (length 5)
    assert meta.doc_ids.tolist() == [0] * 4 + [1] * 2 + [2] * 8
    assert int(meta.valid_all.sum()) == 19
    assert torch.equal(meta.tokens().positions, meta.position_ids)
    assert len(meta.all_tokens()) == 28


def test_mask_is_per_document_causal_and_hides_padding():
    meta = make_cp_meta(torch.tensor([0, 3, 4], dtype=torch.int32), 1, 0)  # padded to [0, 4, 6]
    mask = meta.tokens().mask_for(meta.tokens(), causal=True)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[:4, :3] = torch.ones(4, 3, dtype=torch.bool).tril()  # doc 0 (token 3 is padding)
    expected[3, :3] = True  # the padding query sees the real keys of its document
    expected[4:, 4] = True  # doc 1: one real key
    assert torch.equal(mask, expected)
    assert torch.equal(meta.tokens().mask_for(meta.tokens(), causal=False)[0], expected[3])


def test_pad_cu_seqlens():
    assert pad_cu_seqlens(torch.tensor([0, 1, 1, 9]), 4).tolist() == [0, 4, 4, 12]


@pytest.mark.parametrize(
    ("cu", "cp_size", "cp_rank", "match"),
    [
        (torch.tensor([1, 3]), 2, 0, "start at 0"),
        (torch.tensor([0, 3, 2]), 2, 0, "non-decreasing"),
        (torch.tensor([[0, 3]]), 2, 0, "1-D"),
        (torch.tensor([0.0, 3.0]), 2, 0, "integer"),
        (torch.tensor([0, 3]), 2, 2, "cp_rank"),
        (torch.tensor([0, 3]), 0, 0, "cp_size"),
    ],
)
def test_bad_input_is_a_clear_error(cu, cp_size, cp_rank, match):
    with pytest.raises(ValueError, match=match):
        make_cp_meta(cu, cp_size, cp_rank)


def test_shard_checks_length():
    with pytest.raises(ValueError, match="must be 4"):
        shard(torch.zeros(5), torch.tensor([0, 4]), 2, 0)
