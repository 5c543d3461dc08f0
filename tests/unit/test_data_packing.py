"""Packing (no document crosses a sequence boundary, overlong error/split), loss masks (exactly the target and
its end token), the shard format's random-access reader, and the resumable distributed sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lcrecipes.data.config import SyntheticConfig
from lcrecipes.data.encode import Encoded, Encoder
from lcrecipes.data.example import Passage, RetrievalExample
from lcrecipes.data.packing import OverlongError, Packer
from lcrecipes.data.sampler import DistributedSampler
from lcrecipes.data.shards import ShardDataset, ShardWriter
from lcrecipes.data.synthetic.generator import SyntheticGenerator
from lcrecipes.data.tokenizer import load_tokenizer, train_tokenizer
from lcrecipes.strategies import STRATEGIES, get_strategy


def _docs(rng, n, max_len):
    out = []
    for k in range(n):
        length = int(rng.integers(1, max_len + 1))
        mask = (rng.random(length) < 0.3).astype(np.uint8)
        out.append(Encoded(f"d{k}", rng.integers(0, 50_000, length).astype(np.uint32), mask))
    return out


def _check_sequences(seqs, docs, seq_len, pad_id):
    """Every doc appears whole, once, inside one sequence; boundaries and padding are consistent."""
    by_id = {d.doc_id: d for d in docs}
    seen = []
    for s in seqs:
        assert len(s.ids) == len(s.mask) == seq_len and s.cu_seqlens[0] == 0 and s.cu_seqlens[-1] == seq_len
        assert np.all(np.diff(s.cu_seqlens) > 0)
        for (doc_id, piece), a, b in zip(s.docs, s.cu_seqlens[:-1], s.cu_seqlens[1:]):
            assert piece == 0
            np.testing.assert_array_equal(s.ids[a:b], by_id[doc_id].ids)
            np.testing.assert_array_equal(s.mask[a:b], by_id[doc_id].mask)
            seen.append(doc_id)
        end = s.cu_seqlens[s.n_docs]
        assert np.all(s.ids[end:] == pad_id) and not s.mask[end:].any()
    assert sorted(seen) == sorted(by_id)


@pytest.mark.parametrize("open_bins", [1, 4])
def test_packer_never_crosses_boundaries(open_bins):
    rng = np.random.default_rng(0)
    docs = _docs(rng, 300, 120)
    p = Packer(128, pad_id=7, open_bins=open_bins)
    seqs = [s for d in docs for s in p.add(d)] + list(p.flush())
    _check_sequences(seqs, docs, 128, 7)
    fill = sum(int(s.cu_seqlens[s.n_docs]) for s in seqs) / (128 * len(seqs))
    assert fill > (0.75 if open_bins > 1 else 0.5)


def test_overlong_is_an_error_naming_the_document_or_is_split():
    doc = Encoded("q42", np.arange(300, dtype=np.uint32), np.ones(300, dtype=np.uint8))
    with pytest.raises(OverlongError, match="document 'q42' has 300 tokens > seq_len=128"):
        list(Packer(128, 0).add(doc))
    p = Packer(128, 0, open_bins=1, overlong="split")
    seqs = list(p.add(doc)) + list(p.flush())
    assert [s.docs for s in seqs] == [[("q42", 0)], [("q42", 1)], [("q42", 2)]]
    np.testing.assert_array_equal(np.concatenate([s.ids[: s.cu_seqlens[1]] for s in seqs]), doc.ids)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    gen = SyntheticGenerator(SyntheticConfig(), 0)
    return load_tokenizer(train_tokenizer(gen.tokenizer_texts(), tmp_path_factory.mktemp("tok"), 800, "t"))


def _example():
    docs = [
        Passage("a", "Ada Adler", "Ada Adler was born in Arden in 1950."),
        Passage("b", "Bela Brandt", "Bela Brandt was born in Calvi in 1960."),
    ]
    return RetrievalExample(
        "q1",
        "Where was Bela Brandt born?",
        ["Calvi"],
        docs,
        [2],
        {2: ["Bela Brandt was born in Calvi in 1960."]},
        reasoning="Bela Brandt was born in Calvi.",
    )


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_loss_mask_is_exactly_target_and_end_token(tok, name):
    s, ex = get_strategy(name), _example()
    enc = Encoder(tok, s).encode_examples([ex])[0]
    on = np.flatnonzero(enc.mask)
    assert on.size and np.all(np.diff(on) == 1)  # one contiguous block
    assert tok.decode(enc.ids[on]) == s.build_target(ex) + "<|im_end|>"
    assert enc.ids[on[-1]] == tok.eos_token_id
    prompt = tok.decode(enc.ids[: on[0]])
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    assert tok.decode(enc.ids[on[-1] + 1 :]) == "\n"  # the template's trailing newline is not trained on


def test_loss_mask_without_chat_template(tok):
    tok2 = load_tokenizer(tok.name_or_path)
    tok2.chat_template = None
    s, ex = get_strategy("doc_ids"), _example()
    enc = Encoder(tok2, s).encode_examples([ex])[0]
    on = np.flatnonzero(enc.mask)
    assert tok2.decode(enc.ids[on]) == s.build_target(ex) + "<|im_end|>" and on[-1] == len(enc.ids) - 1
    assert tok2.decode(enc.ids[: on[0]]) == s.prompt(ex) + "\n"


def test_lm_documents_train_on_every_token(tok):
    (enc,) = Encoder(tok).encode_documents([("d0", "Ada Adler was born in Arden.")])
    assert enc.mask.all() and enc.ids[-1] == tok.eos_token_id
    assert tok.decode(enc.ids) == "Ada Adler was born in Arden.<|im_end|>"


def _write_split(root, seq_len=64, n_docs=40, seed=0):
    import json

    rng = np.random.default_rng(seed)
    docs = _docs(rng, n_docs, 50)
    p, shards = Packer(seq_len, pad_id=0), []
    seqs = [s for d in docs for s in p.add(d)] + list(p.flush())
    for k, part in enumerate([seqs[: len(seqs) // 2], seqs[len(seqs) // 2 :]]):
        with ShardWriter(root / f"shard_{k:05d}", seq_len) as w:
            for s in part:
                w.write(s)
            rec = w.finish({"index": k})
        shards.append({"name": f"shard_{k:05d}", "n_sequences": len(part), "sha256": rec["sha256"]})
    (root / "manifest.json").write_text(json.dumps({"seq_len": seq_len, "shards": shards}))
    return seqs


def test_shard_roundtrip_random_access(tmp_path):
    seqs = _write_split(tmp_path)
    ds = ShardDataset(tmp_path, verify=True)
    assert len(ds) == len(seqs)
    for i in (0, len(seqs) // 2, len(seqs) - 1, -1):
        item, ref = ds[i], seqs[i]
        np.testing.assert_array_equal(item["input_ids"].numpy(), ref.ids.astype(np.int64))
        np.testing.assert_array_equal(item["loss_mask"].numpy(), ref.mask.astype(bool))
        np.testing.assert_array_equal(item["cu_seqlens"].numpy(), ref.cu_seqlens)
        assert (
            item["input_ids"].dtype.is_floating_point is False
            and item["cu_seqlens"].dtype == __import__("torch").int32
            and item["n_docs"] == ref.n_docs
        )
        cu = ref.cu_seqlens
        for a, b in zip(cu[:-1], cu[1:]):
            np.testing.assert_array_equal(item["position_ids"][a:b].numpy(), np.arange(b - a))
    with pytest.raises(IndexError):
        ds[len(ds)]
    (tmp_path / "shard_00001" / "mask.u8").write_bytes(b"\0" * 64 * ds.shards[1].n_seq)
    with pytest.raises(ValueError, match="sha256 differs"):
        ShardDataset(tmp_path, verify=True)


def test_shard_writer_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(tmp_path / "shard_00000", 8):
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_sampler_resume_sees_the_same_data():
    full = DistributedSampler(103, rank=1, world_size=4, seed=5)
    ref = [i for _ in range(2) for i in full]  # two epochs uninterrupted
    s = DistributedSampler(103, rank=1, world_size=4, seed=5)
    it, got = iter(s), []
    for _ in range(20):  # interrupted inside epoch 0 (25 indices per rank)
        got.append(next(it))
    state = s.state_dict()
    resumed = DistributedSampler(103, rank=1, world_size=4, seed=5)
    resumed.load_state_dict(state)
    got += list(resumed) + list(resumed)
    assert got[: len(ref)] == ref and resumed.epoch == 2
    with pytest.raises(ValueError, match="world_size=4"):
        DistributedSampler(103, rank=0, world_size=2, seed=5).load_state_dict(state)


@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_ranks_partition_an_epoch(drop_last):
    parts = [DistributedSampler(10, r, 3, seed=1, drop_last=drop_last).indices(0) for r in range(3)]
    assert len({len(p) for p in parts}) == 1
    flat = np.concatenate(parts)
    if drop_last:
        assert len(flat) == 9 and len(set(flat.tolist())) == 9
    else:
        assert set(flat.tolist()) == set(range(10))
    assert not np.array_equal(DistributedSampler(10, 0, 3, 1).indices(0), DistributedSampler(10, 0, 3, 1).indices(1))


def test_trained_tokenizer_is_a_hf_dir_matching_sentencepiece(tok, tmp_path):
    import io

    import sentencepiece as spm
    from transformers import AutoTokenizer

    from lcrecipes.data.tokenizer import spm_to_hf

    root = tok.name_or_path
    auto = AutoTokenizer.from_pretrained(root, local_files_only=True)
    assert len(auto) == 800 and auto.eos_token == "<|im_end|>" and auto.chat_template
    texts = [t for t in SyntheticGenerator(SyntheticConfig(), 0).tokenizer_texts() if t.strip()]
    samples = texts[:300] + ["[DOC 12] Zoë\n\nline  two\ttab", "Answer: 42"]
    (tmp_path / "m.model").write_bytes((Path(root) / "spm.model").read_bytes())
    buf = io.BytesIO()  # sentencepiece defaults: nmt_nfkc, dummy prefix, extra-whitespace removal
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=500, minloglevel=2, hard_vocab_limit=False
    )
    for proto, hf in (
        ((tmp_path / "m.model").read_bytes(), load_tokenizer(tmp_path / "m.model")),
        (buf.getvalue(), spm_to_hf(buf.getvalue())),
    ):
        sp = spm.SentencePieceProcessor(model_proto=proto)
        for x in samples[:-2] + ["  Two  spaces here "]:
            assert hf.encode(x, add_special_tokens=False) == sp.encode(x), x
    for x in samples:
        assert auto.decode(auto.encode(x, add_special_tokens=False)) == x
