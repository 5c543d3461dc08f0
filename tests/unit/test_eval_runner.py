"""The issue's done-criterion on CPU: a suite with one in-domain task (two lengths) and two out-of-domain tasks runs
on a tiny random-init HF Llama with two compression methods at three budgets and RAG at two budgets; a run killed
with SIGKILL (plus a half-written last row) resumes with no lost and no duplicated row, its predictions equal an
uninterrupted run's, and the report writes its tables and plots."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lcrecipes.data.example import Passage, RetrievalExample
from lcrecipes.eval import report, runner
from lcrecipes.eval.metrics import HFJudge
from lcrecipes.eval.runner import read_rows, run_eval
from tests.unit.test_eval_context import save_tiny_llama, sentences, tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
N_ROWS = 4 * (1 + 3 + 3 + 2)  # items (ID@2 lengths, QA, MC) x settings (full, 2 methods x 3 budgets, RAG x 2)
CHILD = """
import sys, time, torch
torch.set_num_threads(1)
from lcrecipes.eval.runner import run_eval
run_eval(sys.argv[1], sys.argv[2], "doc_ids", sys.argv[3], on_row=lambda row: time.sleep(0.25))
"""


def _example(qid: str, n_docs: int, rng: random.Random, mc: bool = False) -> dict:
    docs = [Passage(f"{qid}_{i}", f"Doc {i}", " ".join(sentences(3, rng))) for i in range(n_docs)]
    g = rng.randint(1, n_docs)
    docs[g - 1] = Passage(docs[g - 1].pid, docs[g - 1].title, docs[g - 1].text + " The city is Oslo.")
    ex = RetrievalExample(qid, f"Which city {qid}?", ["B"] if mc else ["Oslo"], docs, [g],
                          supporting={g: ["The city is Oslo."]}, choices=["Rome", "Oslo"] if mc else None)  # fmt: skip
    return ex.to_json()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("eval_run")
    save_tiny_llama(tiny_tokenizer(), root / "model", max_positions=4096)
    rng = random.Random(0)
    files = {"in_domain_4.jsonl": [_example("i4", 4, rng)], "in_domain_8.jsonl": [_example("i8", 8, rng)],
             "ood_qa.jsonl": [_example("f", 6, rng)], "ood_mc.jsonl": [_example("m", 6, rng, mc=True)]}  # fmt: skip
    for name, rows in files.items():
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = {
        "name": "tiny_test", "seed": 0, "limit": 1, "max_new_tokens": 6, "max_context_tokens": 1024,
        "attention_ndcg": True,
        "tasks": [{"name": "synthetic_in_domain", "path": str(root / "in_domain_{length}.jsonl"), "lengths": [4, 8]},
                  {"name": "synthetic_ood_qa", "path": str(root / "ood_qa.jsonl")},
                  {"name": "synthetic_ood_mc", "path": str(root / "ood_mc.jsonl")}],
        "settings": {"compression": [{"method": "snapkv", "budgets": [16, 32, 64], "modes": ["query_aware"]},
                                     {"method": "streamingllm", "budgets": [16, 32, 64], "modes": ["query_agnostic"]}],
                     "rag": [{"retriever": "bm25", "budgets": [32, 64], "chunk_tokens": 32}]},
    }  # fmt: skip
    (root / "suite.yaml").write_text(yaml.safe_dump(suite))
    torch.set_num_threads(1)
    return {"root": root, "model": str(root / "model"), "suite": str(root / "suite.yaml")}


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_killed_run_resumes_without_lost_or_duplicated_rows(setup):
    out = setup["root"] / "killed"
    pred = out / "predictions.jsonl"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    args = [sys.executable, "-c", CHILD, setup["model"], setup["suite"], str(out)]
    child = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while _lines(pred) < 3 and child.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    _, err = child.communicate()
    before = pred.read_bytes()
    assert 3 <= before.count(b"\n") < N_ROWS, err.decode()[-2000:]
    with pred.open("ab") as fh:  # a row cut in the middle of its write
        fh.write(b'{"key": "synthetic_ood_mc|-|m|full", "predic')

    written = []
    run_eval(setup["model"], setup["suite"], "doc_ids", out, on_row=written.append)
    rows = read_rows(out)
    keys = [r["key"] for r in rows]
    assert len(rows) == N_ROWS and len(set(keys)) == N_ROWS
    assert pred.read_bytes().startswith(before) and len(written) == N_ROWS - before.count(b"\n")

    ref_dir = setup["root"] / "uninterrupted"
    run_eval(setup["model"], setup["suite"], "doc_ids", ref_dir)
    ref = {r["key"]: r["prediction"] for r in read_rows(ref_dir)}
    assert {r["key"]: r["prediction"] for r in rows} == ref

    again = []
    run_eval(setup["model"], setup["suite"], "doc_ids", out, on_row=again.append)
    assert again == [] and _lines(pred) == N_ROWS


def test_rows_hold_scores_memory_and_settings(setup):
    out = setup["root"] / "uninterrupted"
    if not (out / "predictions.jsonl").exists():
        run_eval(setup["model"], setup["suite"], "doc_ids", out)
    rows = read_rows(out)
    by = {r["setting"]: r for r in rows if r["task"] == "synthetic_ood_qa"}
    assert set(by) == {"full", "rag_bm25@32", "rag_bm25@64"} | {
        f"{m}@{b}:{mode}"
        for b in (16, 32, 64)
        for m, mode in (("snapkv", "query_aware"), ("streamingllm", "query_agnostic"))
    }
    for r in rows:
        assert {"prediction", "parsed", "score", "scores", "prefill_s", "decode_s", "peak_rss_bytes"} <= set(r)
        assert 0.0 <= r["score"] <= 1.0 and r["strategy"] == "doc_ids" and r["seed"] == 0
    snap = by["snapkv@16:query_aware"]
    assert snap["kv_bytes_kept"] < snap["kv_bytes_full"] and snap["n_kept_tokens"] == 16 and snap["memory_claim_ok"]
    assert by["full"]["kv_bytes_kept"] == by["full"]["kv_bytes_full"] and by["full"]["attn_ndcg10"] is not None
    assert by["rag_bm25@32"]["rag"]["n_kept_tokens"] == by["rag_bm25@32"]["n_kept_tokens"] <= 32
    meta = json.loads((out / "run.json").read_text())
    assert meta["strategy"] == "doc_ids" and meta["suite"]["name"] == "tiny_test" and "environment" in meta
    with pytest.raises(ValueError, match="this run dir holds strategy='doc_ids'"):
        run_eval(setup["model"], setup["suite"], "answer_only", out)


def test_report_cli_writes_tables_and_plots(setup, capsys):
    out = setup["root"] / "uninterrupted"
    if not (out / "predictions.jsonl").exists():
        run_eval(setup["model"], setup["suite"], "doc_ids", out)
    rep = setup["root"] / "report"
    p = argparse.ArgumentParser()
    report.add_arguments(p)
    assert report.main(p.parse_args([str(out), "--out", str(rep), "--baseline", str(out)])) == 0
    assert capsys.readouterr().out.strip() == str(rep / "summary.md")
    text = (rep / "summary.md").read_text()
    assert "Table 1" in text and "Table 2" in text and "Table 3" in text and "Table 10" in text
    assert (rep / "model" / "score_vs_budget.png").stat().st_size > 1000
    p = argparse.ArgumentParser()
    runner.add_arguments(p)
    args = p.parse_args([setup["model"], "--suite", setup["suite"], "--strategy", "doc_ids", "--out", str(out)])
    assert runner.main(args) == 0  # everything done: nothing runs
    assert runner.main(p.parse_args([setup["model"], "--suite", setup["suite"]])) == 2
    assert "pass --strategy, --out" in capsys.readouterr().err
    recipe = runner.resolve_target(p.parse_args([str(REPO / "recipes/tiny_cpu/doc_ids.yaml")]))
    assert recipe[1:] == ("eval/suites/tiny_cpu.yaml", "doc_ids", "runs/tiny_cpu/doc_ids/eval/tiny_cpu",
                          "tiny_cpu-doc_ids", 1)  # fmt: skip


def test_hf_judge_on_the_tiny_model(setup):
    model, tok = runner.load_model(setup["model"])
    judge = HFJudge(setup["model"], max_new_tokens=4, model=model, tokenizer=tok)
    rating, raw = judge.rate("Which city?", "Oslo", "Oslo")
    assert (rating is None or 0 <= rating <= 100) and isinstance(raw, str) and judge.last == (rating, raw)


def test_resuming_with_other_generation_settings_is_refused(setup):
    """Rows of a run dir were generated with one max_new_tokens (or truncation, dtype, ...): a rerun whose suite
    says otherwise must not skip them as done, nor append rows of another kind; a larger limit is a resume."""
    from dataclasses import replace

    from lcrecipes.eval.suite import SettingsSpec, load_suite

    suite = load_suite(setup["suite"])
    small = replace(suite, tasks=suite.tasks[2:], settings=SettingsSpec(full=True, compression=[], rag=[]))
    out = setup["root"] / "regen"
    run_eval(setup["model"], small, "doc_ids", out)
    before = (out / "predictions.jsonl").read_bytes()
    with pytest.raises(runner.EvalError, match="max_new_tokens=6.*says 9"):
        run_eval(setup["model"], replace(small, max_new_tokens=9), "doc_ids", out)
    with pytest.raises(runner.EvalError, match="truncation"):
        run_eval(setup["model"], replace(small, truncation="end"), "doc_ids", out)
    assert (out / "predictions.jsonl").read_bytes() == before
    run_eval(setup["model"], replace(small, limit=2), "doc_ids", out)  # more rows of the same kind: fine


def test_topk_retrieval_through_the_runner(setup, monkeypatch):
    """The study suite's RetrievalAttention setting end to end on the saved tiny model: both modes, a token budget,
    the top-k kernel selecting at every decode step, the full cache kept (masking only: kept == full)."""
    from dataclasses import replace

    from lcrecipes.eval.compression import topk_retrieval
    from lcrecipes.eval.suite import CompressionSpec, SettingsSpec, load_suite

    selections = []
    select = topk_retrieval.boundary_scores
    monkeypatch.setattr(topk_retrieval, "boundary_scores", lambda ctx, k: selections.append(k) or select(ctx, k))

    suite = load_suite(setup["suite"])
    topk = CompressionSpec(method="topk_retrieval", budgets=[16], modes=["query_aware", "query_agnostic"])
    small = replace(suite, tasks=suite.tasks[2:], settings=SettingsSpec(full=True, compression=[topk], rag=[]))
    out = setup["root"] / "topk"
    run_eval(setup["model"], small, "doc_ids", out)
    by = {r["setting"]: r for r in read_rows(out)}
    assert set(by) == {"full", "topk_retrieval@16:query_aware", "topk_retrieval@16:query_agnostic"}
    for mode in ("query_aware", "query_agnostic"):
        r = by[f"topk_retrieval@16:{mode}"]
        assert r["kv_bytes_kept"] == r["kv_bytes_full"] == by["full"]["kv_bytes_full"] and r["memory_claim_ok"]
        assert r["n_kept_tokens"] == 16 and r["decode_s"] > 0
    assert selections and set(selections) == {16}  # one selection per layer per decode step (and question step)
