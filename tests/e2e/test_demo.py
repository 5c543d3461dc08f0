"""The fast demo end to end (`lcr demo --fast`, what `make demo DEMO_FAST=1` runs), in a scratch working directory.

Checks measured facts of that run, not constants: every fine-tuned model beats the base model in-domain, the 95%
paired bootstrap interval of its gain (per question, over the same 256 questions) lying above zero; every report
table and plot exists; and a second `lcr demo --fast` skips the finished stages (train, convert, eval data) and
writes no rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lcrecipes.commands.demo import FAST

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow]


def _demo(cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "lcrecipes.cli", "demo", "--fast"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=3600)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    cwd = tmp_path_factory.mktemp("demo")
    for name in ("recipes", "eval"):  # recipe and suite paths are relative to the working directory
        (cwd / name).symlink_to(REPO / name)
    first = _demo(cwd)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    return {"cwd": cwd, "first": first, "report": cwd / FAST.report}


def test_fine_tuned_models_beat_the_base_model_in_domain(demo):
    summary = json.loads((demo["report"] / "summary.json").read_text())
    base = summary["tiny_cpu-base"]["settings"]["full"]["synthetic_in_domain"]
    tuned = [label for label in summary if label != "tiny_cpu-base"]
    assert tuned == ["tiny_cpu-answer_only", "tiny_cpu-doc_ids"]
    for label in tuned:
        ours = summary[label]["settings"]["full"]["synthetic_in_domain"]
        assert ours["n"] == base["n"] >= 256
        gain = summary[label]["gain_ci"]["synthetic_in_domain"]  # paired over the same questions
        assert gain["n"] == ours["n"] and gain["lo"] > 0, f"{label}: in-domain {ours}, base {base}, gain {gain}"
        assert summary[label]["gain_over_base"]["full"]["avg_in_domain"] > 0


def test_reports_have_every_table_and_plot(demo):
    text = (demo["report"] / "summary.md").read_text()
    for title in ("Table 1", "Table 2", "Table 3", "Table 4", "Table 10", "Gain over tiny_cpu-base"):
        assert title in text, title
    assert "snapkv@128" in text and "streamingllm@128" in text and "rag_bm25@128" in text
    assert (demo["report"] / "score_vs_length.png").read_bytes()[:4] == b"\x89PNG"
    for label in ("tiny_cpu-base", "tiny_cpu-answer_only", "tiny_cpu-doc_ids"):
        md = (demo["report"] / label / "report.md").read_text()
        assert "In-domain, full context, by length" in md
        for png in ("score_vs_length.png", "score_vs_budget.png"):
            assert (demo["report"] / label / png).read_bytes()[:4] == b"\x89PNG"
    assert "report: " in demo["first"].stdout and "| model |" in demo["first"].stdout  # the headline table


def test_rerun_skips_finished_stages(demo):
    ckpts = sorted((demo["cwd"] / "runs/fast/tiny_cpu").glob("*/checkpoints/step_*/state.json"))
    before = {p: p.stat().st_mtime_ns for p in ckpts}
    second = _demo(demo["cwd"])
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stderr
    for recipe in ("base", "answer_only", "doc_ids"):
        for stage in ("train", "convert", "eval data"):
            assert f"[tiny_cpu/{recipe}] {stage}: done, skipped" in log
    assert log.count(", 0 to run") == 3  # the eval of each model finds every row written
    # the base model (train.steps 0) only re-checks its eval; the fine-tunes re-check prepare and eval (no-ops)
    assert "lcr run: 5 stage(s) ran, 10 skipped" in second.stdout
    assert ckpts and {p: p.stat().st_mtime_ns for p in ckpts} == before


def test_pretrain_flag_pretrains_the_base_model_and_starts_from_it(tmp_path):
    """`lcr demo --fast --pretrain` (shrunk to 2 training steps and a 4-question suite) runs pretrain_1 and
    pretrain_2 under the demo's root and evaluates / fine-tunes from that export, not the shipped model; the base
    model is not trained (--steps leaves its train.steps at 0)."""
    for name in ("recipes", "eval"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "suite.yaml").write_text(
        "name: s\nlimit: 4\nmax_new_tokens: 4\ntasks:\n  - name: synthetic_in_domain\n"
        "    path: runs/fast/sets/in_{length}.jsonl\n    lengths: [256]\nsettings:\n  full: true\n")
    small = ["train.warmup_steps=1", "checkpoint.every=2", "data.num_train=8", "data.num_eval=2",
             "eval.suite=suite.yaml"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "lcrecipes.cli", "demo", "--fast", "--pretrain", "--steps", "2",
           *(f"--set={o}" for o in small)]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    fast = tmp_path / "runs/fast/tiny_cpu"
    model = "runs/fast/tiny_cpu/pretrain_2/hf"
    assert (fast / "pretrain_1/checkpoints/step_2").is_dir() and (tmp_path / model / "config.json").is_file()
    base_rows = (fast / "base/eval/s/predictions.jsonl").read_text().splitlines()
    assert {json.loads(r)["model_dir"] for r in base_rows} == {str(tmp_path / model)}
    resolved = (fast / "doc_ids/config.yaml").read_text()
    assert f"hf_path: {model}" in resolved and f"tokenizer: {model}" in resolved and "steps: 2\n" in resolved
    assert not (fast / "base/checkpoints").exists()
