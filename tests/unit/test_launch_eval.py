"""An eval suite cut into (task, setting) slices, as the job array runs it: every slice expands to exactly one
setting, the merged rows equal a whole-suite ``run_eval`` (same keys, same predictions and scores), the merge waits
for every slice and is idempotent. Runs the slices in this process on a tiny random-init HF Llama (~5 s)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from lcrecipes.data.example import Passage, RetrievalExample
from lcrecipes.eval.runner import read_rows, run_eval
from lcrecipes.eval.suite import load_suite
from lcrecipes.launch import eval_array
from lcrecipes.launch.eval_array import DONE, eval_slices, merge_slices, run_slice, slice_dir, slice_suite
from tests.unit.test_eval_context import save_tiny_llama, sentences, tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
TIMING = ("wall_s", "prefill_s", "decode_s", "peak_rss_bytes")  # differ between any two runs


def _example(qid: str, n_docs: int, rng: random.Random, mc: bool = False) -> dict:
    docs = [Passage(f"{qid}_{i}", f"Doc {i}", " ".join(sentences(3, rng))) for i in range(n_docs)]
    g = rng.randint(1, n_docs)
    ex = RetrievalExample(qid, f"Which city {qid}?", ["B"] if mc else ["Oslo"], docs, [g],
                          choices=["Rome", "Oslo"] if mc else None)  # fmt: skip
    return ex.to_json()


def make_eval_setup(root: Path, settings: dict) -> dict:
    """A tiny HF model dir, three one-example task files and a suite over them with ``settings``."""
    save_tiny_llama(tiny_tokenizer(), root / "model")
    rng = random.Random(0)
    files = {"in.jsonl": [_example("i", 4, rng)], "qa.jsonl": [_example("q", 4, rng)],
             "mc.jsonl": [_example("m", 4, rng, mc=True)]}  # fmt: skip
    for name, rows in files.items():
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = {"name": "tiny_array", "seed": 0, "limit": 1, "max_new_tokens": 4, "max_context_tokens": 1024,
             "tasks": [{"name": "synthetic_in_domain", "path": str(root / "in.jsonl")},
                       {"name": "synthetic_ood_qa", "path": str(root / "qa.jsonl")},
                       {"name": "synthetic_ood_mc", "path": str(root / "mc.jsonl")}],
             "settings": settings}  # fmt: skip
    (root / "suite.yaml").write_text(yaml.safe_dump(suite))
    return {"model": str(root / "model"), "suite": str(root / "suite.yaml")}


def _strip(rows: list[dict]) -> dict[str, dict]:
    return {r["key"]: {k: v for k, v in r.items() if k not in TIMING} for r in rows}


def test_every_slice_of_the_shipped_suites_is_one_setting() -> None:
    for path in sorted((REPO / "eval" / "suites").glob("*.yaml")):
        suite = load_suite(path)
        slices = eval_slices(suite)
        assert len({s.name for s in slices}) == len(slices) > 0, path
        for sl in slices:
            sub = slice_suite(suite, sl)
            assert [t.name for t in sub.tasks] == [sl.task], path
    # in-domain (2 lengths) at full context only; the 2 OOD tasks under full + 6 compression + 3 RAG settings
    assert len(eval_slices(load_suite(REPO / "eval/suites/tiny_cpu.yaml"))) == 1 + 2 * (1 + 6 + 3)


def test_merged_slices_equal_a_whole_suite_run(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    settings = {"full": True, "compression": [{"method": "snapkv", "budgets": [16], "modes": ["query_aware"]}]}
    s = make_eval_setup(tmp_path, settings)
    whole = read_rows(run_eval(s["model"], s["suite"], "doc_ids", tmp_path / "whole", label="m").parent)
    out = tmp_path / "array"
    n = len(eval_slices(load_suite(s["suite"])))
    assert n == 6
    for i in range(n):
        assert merge_slices(out, s["suite"]) is None  # waits for every slice
        run_slice(s["model"], s["suite"], "doc_ids", out, i, label="m")
        assert (slice_dir(out, i) / DONE).is_file()
    merged = merge_slices(out, s["suite"])
    assert merged is not None and merged.n_rows == len(whole) == 6
    assert _strip(read_rows(out)) == _strip(whole)
    meta = json.loads((out / "run.json").read_text())
    assert meta["suite"]["name"] == "tiny_array" and len(meta["suite"]["tasks"]) == 3
    before = (out / "predictions.jsonl").read_bytes()
    assert merge_slices(out, s["suite"]).n_rows == 6 and (out / "predictions.jsonl").read_bytes() == before
    # the merged dir is an ordinary eval run dir: a whole-suite rerun there finds every row done
    run_eval(s["model"], s["suite"], "doc_ids", out, label="m")
    assert (out / "predictions.jsonl").read_bytes() == before


def test_count_and_bad_index_from_the_command_line(tmp_path: Path, capsys) -> None:
    suite = str(REPO / "eval/suites/tiny_cpu.yaml")
    assert eval_array.main(["count", suite]) == 0 and capsys.readouterr().out == "21\n"
    with pytest.raises(IndexError, match=r"slice index 21 outside \[0, 21\)"):
        eval_array.main(["run", "m", "--suite", suite, "--strategy", "x", "--out", str(tmp_path), "--index", "21"])
    assert eval_array.main(["merge", "--suite", suite, "--out", str(tmp_path)]) == 1  # nothing to merge yet
