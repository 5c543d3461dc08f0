"""End to end: `prepare` writes shards for every strategy at 8K and 128K tokens from HotpotQA-format questions
plus a passage corpus and from the synthetic generator; documents never cross a sequence boundary; loss masks
are exactly the targets; every strategy's parser recovers what its target builder wrote; outputs are
byte-identical for the same seed; reruns skip finished work; bad inputs fail naming file and line."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lcrecipes.data.config import DataConfig, SyntheticConfig, data_config
from lcrecipes.data.errors import DataError
from lcrecipes.data.example import RetrievalExample, render_context
from lcrecipes.data.fixtures import write_hotpotqa_fixture
from lcrecipes.data.packing import OverlongError
from lcrecipes.data.prepare import build_examples, manifest_tokenizer, prepare, write_examples_jsonl
from lcrecipes.data.shards import ShardDataset
from lcrecipes.data.tokenizer import load_tokenizer
from lcrecipes.strategies import STRATEGIES, get_strategy
from lcrecipes.strategies.base import target_answer

K8, K128 = 8192, 131072
BIG_WORLD = SyntheticConfig(entities=1600, companies=300, domain="mixed")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """A trained tokenizer (from a small synthetic prepare) and HotpotQA-format fixture files."""
    root = tmp_path_factory.mktemp("data")
    cfg = DataConfig(out_dir=str(root / "tiny"), num_train=8, num_eval=4, seq_len=2048, context_tokens=800)
    out = prepare(cfg, "doc_ids")
    paths = write_hotpotqa_fixture(root / "hotpot", n_questions=6, n_corpus=600)
    return {"root": root, "tiny": out, "tokenizer": manifest_tokenizer(out / "train"), **paths}


def _hotpot_cfg(base, seq_len, **kw) -> DataConfig:
    fields = dict(
        source="hotpotqa",
        train_path=str(base["train_path"]),
        corpus_path=str(base["corpus_path"]),
        tokenizer=base["tokenizer"],
        cache_dir=str(base["root"] / "cache"),
        seq_len=seq_len,
        context_tokens=seq_len - 1024,
        num_train=3 if seq_len == K8 else 1,
        num_eval=1,
        negatives_top_k=400,
    )
    return DataConfig(**{**fields, **kw})


def check_split(split_dir: Path, strategy: str | None, examples: dict | None = None) -> dict:
    """Shard invariants; returns {qid: decoded target}. With ``examples`` (qid -> RetrievalExample) also checks
    that the strategy's parser reads back exactly the example's gold ids and answer."""
    ds = ShardDataset(split_dir, verify=True)
    tok = load_tokenizer(manifest_tokenizer(split_dir))
    m = ds.manifest
    assert len(ds) == m["counts"]["sequences"] > 0 and ds.seq_len == m["seq_len"]
    docs_per_seq, offset = defaultdict(list), 0
    for shard in ds.shards:
        for line in (shard.root / "documents.jsonl").read_text().splitlines():
            d = json.loads(line)
            docs_per_seq[offset + d["seq"]].append(d)
        offset += shard.n_seq
    targets = {}
    for i in range(len(ds)):
        item = ds.numpy_item(i)
        cu, docs = item["cu_seqlens"], docs_per_seq[i]
        assert cu[-1] == ds.seq_len and item["n_docs"] == len(docs)
        for d, a, b in zip(docs, cu[:-1], cu[1:]):  # each document is exactly one segment of one sequence
            assert (d["start"], d["start"] + d["len"]) == (a, b)
            on = np.flatnonzero(item["loss_mask"][a:b]) + a
            if strategy is None:  # plain document + eos, all trained on
                assert len(on) == b - a and item["input_ids"][b - 1] == tok.eos_token_id
                continue
            assert len(on) and np.all(np.diff(on) == 1) and on[-1] == b - 2  # target + eos, then "\n"
            assert item["input_ids"][on[-1]] == tok.eos_token_id
            targets[d["id"]] = tok.decode(item["input_ids"][on[:-1]])
        assert not item["loss_mask"][cu[item["n_docs"]] :].any()
    assert sum(item_docs for item_docs in map(len, docs_per_seq.values())) == m["counts"]["documents"]
    for qid, text in targets.items():
        s = get_strategy(strategy)
        parsed = s.parse(text)
        assert parsed.well_formed and parsed.answer is not None, (qid, text)
        if examples is not None:
            ex = examples[qid]
            assert text == s.build_target(ex)
            assert parsed.answer == target_answer(ex) and s.score(text, ex)["reward"] == pytest.approx(1.0)
            if "id_f1" in s.metrics:
                assert parsed.ids == ex.gold
    return targets


@pytest.mark.parametrize("seq_len", [K8, K128])
def test_hotpotqa_shards_for_every_strategy(base, seq_len):
    cfg = _hotpot_cfg(base, seq_len)
    splits = ("train", "eval") if seq_len == K8 else ("train",)  # 128K: one example, to keep the suite fast
    examples = {ex.qid: ex for split in splits for ex in build_examples(cfg, split)}
    tok = load_tokenizer(base["tokenizer"])
    for ex in examples.values():
        n = len(tok.encode(render_context(ex.docs), add_special_tokens=False))
        assert cfg.context_tokens - 500 <= n <= cfg.context_tokens
    for name in sorted(STRATEGIES):
        out = prepare(cfg, name, base["root"] / f"hotpot-{seq_len}-{name}", splits)
        for split in splits:
            got = check_split(out / split, name, examples)
            assert len(got) == (cfg.num_train if split == "train" else cfg.num_eval)
    if seq_len == K8:  # eval holds q0, whose corpus has a near-duplicate and a copy of its gold passages
        eval_manifest = json.loads((out / "eval" / "manifest.json").read_text())
        assert eval_manifest["stats"]["promoted"] == 1 and eval_manifest["stats"]["dropped_duplicates"] == 1


@pytest.mark.parametrize("seq_len", [K8, K128])
def test_synthetic_shards_for_every_strategy(base, seq_len):
    world = BIG_WORLD if seq_len == K128 else SyntheticConfig(domain="mixed")
    n, splits = (1, ("train",)) if seq_len == K128 else (4, ("train", "eval"))
    cfg = DataConfig(
        seq_len=seq_len,
        context_tokens=seq_len - 1024,
        num_train=n,
        num_eval=1,
        synthetic=world,
        cache_dir=str(base["root"] / "cache"),
        tokenizer=base["tokenizer"],
        negatives_top_k=50,
    )
    examples = {ex.qid: ex for split in splits for ex in build_examples(cfg, split)}
    for name in sorted(STRATEGIES):
        out = prepare(cfg, name, base["root"] / f"synthetic-{seq_len}-{name}", splits)
        for split in splits:
            check_split(out / split, name, examples)
        stats = json.loads((out / "train" / "manifest.json").read_text())["stats"]
        assert stats["context_tokens"] >= n * (cfg.context_tokens - 300) and "exhausted_candidates" not in stats


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "cache" not in p.parts
    }


def test_same_seed_same_bytes_whatever_the_workers(base):
    cfg = DataConfig(num_train=24, num_eval=4, seq_len=4096, context_tokens=1500, examples_per_shard=10)
    a = prepare(replace(cfg, workers=1), "ids_quotes", base["root"] / "det-a")
    b = prepare(replace(cfg, workers=2), "ids_quotes", base["root"] / "det-b")
    fa, fb = _files(a), _files(b)
    assert len([f for f in fa if f.endswith("tokens.u32")]) == 3 + 1
    assert fa == fb
    c = prepare(replace(cfg, seed=1), "ids_quotes", base["root"] / "det-c")
    assert _files(c)["train/shard_00000/tokens.u32"] != fa["train/shard_00000/tokens.u32"]


def test_rerun_skips_finished_shards_and_rebuilds_on_change(base, tmp_path):
    paths = write_hotpotqa_fixture(tmp_path / "in", n_questions=8, n_corpus=100)
    cfg = _hotpot_cfg(
        base,
        4096,
        train_path=str(paths["train_path"]),
        corpus_path=str(paths["corpus_path"]),
        cache_dir=None,
        num_train=6,
        num_eval=2,
        examples_per_shard=2,
        context_tokens=2000,
    )
    out = prepare(cfg, "doc_ids", tmp_path / "out")
    shard = out / "train" / "shard_00001" / "tokens.u32"
    inode, manifest = shard.stat().st_ino, (out / "train" / "manifest.json").read_bytes()
    (out / "train" / "manifest.json").unlink()  # as if interrupted before the manifest
    prepare(cfg, "doc_ids", tmp_path / "out")
    assert shard.stat().st_ino == inode and (out / "train" / "manifest.json").read_bytes() == manifest
    qs = json.loads(paths["train_path"].read_text())
    qs[3]["answer"] = "Elsewhere"  # record 3 = train record 1, in shard 0
    paths["train_path"].write_text(json.dumps(qs))
    prepare(cfg, "doc_ids", tmp_path / "out")
    assert (out / "train" / "manifest.json").read_bytes() != manifest
    assert shard.stat().st_ino != inode  # fingerprint changed: every shard rebuilt
    assert "Answer: Elsewhere" in "".join(check_split(out / "train", "doc_ids").values())


def test_bad_input_fails_with_file_and_line_or_is_counted(base, tmp_path):
    qs = json.loads(Path(base["train_path"]).read_text())
    del qs[2]["supporting_facts"]
    qs[4]["context"] = [c for c in qs[4]["context"] if c[0] != "Person 4"]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in qs[:5]) + '{"_id": "broken",\n' + json.dumps(qs[5]))
    cfg = _hotpot_cfg(base, K8, train_path=str(path), num_train=-1, num_eval=0)
    with pytest.raises(DataError, match=rf"{path}:3: field 'supporting_facts': missing \[missing_field\]"):
        prepare(cfg, "doc_ids", tmp_path / "strict")
    assert not (tmp_path / "strict" / "train" / "manifest.json").exists()
    out = prepare(replace(cfg, on_bad_record="skip"), "doc_ids", tmp_path / "skip")
    m = json.loads((out / "train" / "manifest.json").read_text())
    assert m["skipped"] == {"gold_missing": 1, "malformed_json": 1, "missing_field": 1}
    assert m["counts"]["documents"] == 4


def test_overlong_example_is_named(base, tmp_path):
    cfg = _hotpot_cfg(base, 2048, context_tokens=2040, num_train=1, num_eval=0)
    with pytest.raises(OverlongError, match=r"document 'q0' has \d+ tokens > seq_len=2048"):
        prepare(cfg, "reasoning", tmp_path / "o")
    out = prepare(replace(cfg, overlong="split"), "reasoning", tmp_path / "s")
    assert json.loads((out / "train" / "manifest.json").read_text())["counts"]["documents"] == 2


def test_lm_documents_from_synthetic(base):
    cfg = DataConfig(
        kind="lm",
        num_train=12,
        num_eval=2,
        seq_len=1024,
        tokenizer=base["tokenizer"],
        synthetic=SyntheticConfig(lm_doc_passages=4),
    )
    out = prepare(cfg, None, base["root"] / "lm")
    check_split(out / "train", None)
    assert json.loads((out / "train" / "manifest.json").read_text())["counts"]["documents"] == 12


def test_eval_test_sets_as_jsonl(base, tmp_path):
    cfg = DataConfig(out_dir=str(base["tiny"]), tokenizer=base["tokenizer"], synthetic=SyntheticConfig())
    tok = load_tokenizer(base["tokenizer"])
    for domain in ("in_domain", "out_of_domain"):
        path = tmp_path / f"{domain}.jsonl"
        n = write_examples_jsonl(build_examples(cfg, "eval", domain, context_tokens=1500, num=6), path)
        rows = [RetrievalExample.from_json(json.loads(line)) for line in path.read_text().splitlines()]
        assert n == len(rows) == 6 and {r.domain for r in rows} == {domain}
        for r in rows:
            assert len(tok.encode(render_context(r.docs), add_special_tokens=False)) <= 1500
            assert all(s in r.docs[i - 1].text for i, ss in r.supporting.items() for s in ss)
        assert any(r.choices for r in rows) == (domain == "out_of_domain")


def test_config_validation_and_overrides():
    assert DataConfig().validate() == []
    bad = DataConfig(source="nq", seq_len=2 << 20, negatives="splade", synthetic=SyntheticConfig(questions=["x"]))
    keys = {k for k, _ in bad.validate()}
    assert {"source", "seq_len", "negatives"} <= keys
    assert "synthetic.questions" in {k for k, _ in DataConfig(synthetic=SyntheticConfig(questions=["x"])).validate()}
    assert {k for k, _ in DataConfig(source="hotpotqa").validate()} == {"train_path", "tokenizer"}
    assert data_config(["seq_len=4096", "synthetic.entities=50"]).synthetic.entities == 50
    with pytest.raises(ValueError, match="nope"):
        data_config(["nope=1"])


def test_lcr_prepare_reports_an_overlong_document_in_one_line(base, tmp_path, capsys):
    import yaml

    from lcrecipes.cli import main

    cfg = _hotpot_cfg(base, 2048, context_tokens=2040, num_train=1, num_eval=0)
    data = {k: getattr(cfg, k) for k in ("source", "train_path", "corpus_path", "tokenizer", "cache_dir", "seq_len",
                                         "context_tokens", "num_train", "num_eval", "negatives_top_k")}  # fmt: skip
    recipe = tmp_path / "r.yaml"
    data["out_dir"] = str(tmp_path / "o")
    body = {"name": "overlong", "run_dir": str(tmp_path / "run"), "strategy": {"name": "reasoning"}, "data": data}
    recipe.write_text(yaml.safe_dump(body))
    assert main(["prepare", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"lcr prepare: {recipe}: document 'q0' has ") and "data.seq_len=2048" in err, err
    assert "data.overlong=error" in err and "data.context_tokens=2040" in err


def test_a_tokenizer_outside_out_dir_given_relative_to_cwd_is_found_again(base, tmp_path, monkeypatch):
    """A fine-tuning recipe names the base run's tokenizer relative to the working directory; the manifest must
    record a path that ``manifest_tokenizer`` resolves from the split dir (it used to join the two)."""
    monkeypatch.chdir(base["root"])
    rel = Path(base["tokenizer"]).relative_to(base["root"])
    cfg = DataConfig(out_dir=str(tmp_path / "ft"), num_train=4, num_eval=2, seq_len=2048, context_tokens=800,
                     tokenizer=str(rel))
    out = prepare(cfg, "doc_ids")
    monkeypatch.chdir(tmp_path)
    assert Path(manifest_tokenizer(out / "train")).resolve() == Path(base["tokenizer"]).resolve()
    assert load_tokenizer(manifest_tokenizer(out / "train")) is not None


def test_a_model_trained_from_scratch_takes_the_prepared_tokenizers_special_ids(base):
    """The HF config of a from-scratch model carries the data tokenizer's eos/pad (our tokenizer: eos=<|im_end|>),
    not LlamaConfig's defaults (bos=1, eos=2), or generation never stops at the trained end of an answer."""
    from lcrecipes.config import load_recipe
    from lcrecipes.train.hf_model import build_hf_model, special_token_ids

    cfg = load_recipe(Path(__file__).parents[2] / "recipes/tiny_cpu/pretrain_1.yaml",
                      [f"data.out_dir={base['tiny']}", "model.num_layers=1", "model.hidden_size=64"]).cfg
    tok = load_tokenizer(base["tokenizer"])
    assert special_token_ids(cfg) == {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                                      "pad_token_id": tok.pad_token_id}
    model = build_hf_model(cfg, "sdpa")
    assert (model.config.eos_token_id, model.config.pad_token_id) == (tok.eos_token_id, tok.pad_token_id) != (2, None)
