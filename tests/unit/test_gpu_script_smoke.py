"""The GPU bench script (bench/gpu) runs end to end in its CPU smoke mode, so it cannot rot between GPU sessions.

The smoke run is the real script (``bash bench/gpu/run.sh --cpu-smoke``) with tiny sizes; the GPU-only parts
(CUDA, flash-attn, Transformer Engine, Megatron's TE spec) must appear as explicit ``"skipped: <reason>"``.
The orchestrator's timeout and crash handling is checked with small stand-in worker scripts (no torch), and the
offload probe's binary search as a pure function.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.gpu.common import Section
from bench.gpu.main import Orchestrator
from bench.gpu.plan import SECTION_ORDER, make_plan
from bench.gpu.sec_offload import longest_fitting

REPO = Path(__file__).resolve().parents[2]


def numbers(value) -> list[float]:
    """Every number (not bool) anywhere in a JSON value."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers(v)]
    return []


def error_paths(value, path: str = "") -> list[str]:
    """Paths of sub-results that recorded an error (``{"error": ...}``) anywhere in a result."""
    if isinstance(value, dict):
        own = [path] if "error" in value and value.get("status") != "oom" else []
        return own + [p for k, v in value.items() for p in error_paths(v, f"{path}/{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in error_paths(v, f"{path}[{i}]")]
    return []


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_smoke")
    start = time.time()
    proc = subprocess.run(
        ["bash", "bench/gpu/run.sh", "--cpu-smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads((out / "gpu_results.json").read_text())
    return {"data": data, "stdout": proc.stdout, "seconds": time.time() - start}


def test_every_section_has_numbers_or_a_skip_reason(smoke):
    sections = smoke["data"]["sections"]
    assert list(sections) == list(SECTION_ORDER)
    for name, rec in sections.items():
        assert rec["status"] in ("ok", "skipped"), (name, rec.get("error"), rec.get("traceback"))
        if rec["status"] == "skipped":
            assert rec["reason"].startswith("skipped: ") and len(rec["reason"]) > len("skipped: "), name
        else:
            assert numbers(rec["result"]), f"section {name} reported no numbers"
            assert not error_paths(rec["result"]), (name, error_paths(rec["result"]))


def test_smoke_results_are_the_expected_ones(smoke):
    s = smoke["data"]["sections"]
    assert s["megatron_te"]["reason"].startswith("skipped: needs CUDA")
    impls = s["attention"]["result"]["impls"]
    for name in ("ours:ring", "ours:sdpa", "torch_sdpa"):
        assert impls[name]["ok"], (name, impls[name])  # fp32 on CPU: within 1e-4 of the per-document reference
    for name in ("flash_attn_varlen", "torch_varlen_attn", "transformer_engine"):
        assert impls[name].startswith("skipped: "), impls[name]
    for entry in s["train_step"]["result"]["models"].values():
        for row in entry["lengths"].values():
            assert row["status"] == "ok" and row["tokens_per_s"] > 0 and row["model_flops"] > 0
    for method in s["eval_compression"]["result"]["methods"].values():
        assert method["prefill_s"] > 0 and method["new_tokens"] >= 1 and method["memory_claim_holds"]
    probe = s["offload_probe"]["result"]
    assert probe["longest_fit_tokens"] == probe["grid"][-1] and probe["search"] == "complete"


def test_table_is_printed(smoke):
    out = smoke["stdout"]
    assert "lcrecipes GPU bench | mode cpu-smoke" in out
    for name in SECTION_ORDER:
        assert f"\n{name} " in out


@pytest.mark.parametrize("threshold", [0, 1, 3, 7, 10])
def test_longest_fitting_is_a_binary_search(threshold):
    grid = list(range(1, 11))
    tried = []

    def fits(x):
        tried.append(x)
        return x <= threshold

    best, how = longest_fitting(grid, fits)
    assert best == (threshold or None) and how == "complete"
    assert len(tried) <= 5 and tried[0] == 1


def test_longest_fitting_stops_with_the_longest_proven():
    best, how = longest_fitting([1, 2, 3, 4], lambda x: None if x > 2 else True)
    assert (best, how) == (1, "stopped")  # 1 fits, then 3 is tried first and stops the search


class StandIn(Orchestrator):
    """Runs a small Python script in place of the real worker (same event protocol)."""

    script = ""

    def worker_cmd(self, batch, events):
        return [sys.executable, "-c", textwrap.dedent(self.script), str(events), *batch]


EMIT = """
import json, sys, time
def ev(**e):
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps(e) + "\\n")
"""


def run_stand_in(tmp_path, script: str, names: list[str]):
    plan = make_plan("cpu-smoke")
    plan.timeouts = {n: 1.0 for n in SECTION_ORDER}
    orch = StandIn(plan, argparse.Namespace(), tmp_path)
    orch.script, orch.grace_s = EMIT + script, 0.0
    orch.run(names)
    return orch.records


def test_a_section_past_its_timeout_is_stopped_and_keeps_its_partial_result(tmp_path):
    script = """
ev(event="start", section=sys.argv[2], t=time.time())
ev(event="partial", section=sys.argv[2], result={"done": 1}, rows=[["a", "b"]])
time.sleep(60)
"""
    start = time.time()
    records = run_stand_in(tmp_path, script, ["env"])
    assert time.time() - start < 20
    assert records["env"]["status"] == "timeout" and records["env"]["result"] == {"done": 1}


def test_a_crashed_worker_is_recorded_and_the_next_section_still_runs(tmp_path):
    script = """
name = sys.argv[2]
ev(event="start", section=name, t=time.time())
if name == "env":
    print("boom from the worker", flush=True)
    sys.exit(3)
ev(event="end", section=name, record={"status": "ok", "result": {"x": 1}, "rows": [], "seconds": 0.0})
"""
    records = run_stand_in(tmp_path, script, ["env", "attention"])
    assert records["env"]["status"] == "crashed" and "code 3" in records["env"]["error"]
    assert "boom from the worker" in records["env"]["log_tail"]
    assert records["attention"]["status"] == "ok"
    saved = json.loads((tmp_path / "gpu_results.json").read_text())
    assert set(saved["sections"]) == {"env", "attention"}


def test_every_registered_section_is_in_the_run_order():
    from bench.gpu import sections

    assert set(sections.SECTIONS) == set(SECTION_ORDER)
    assert all(cls.summary is not Section.summary for cls in sections.SECTIONS.values())


def test_table_rows_of_gpu_only_results():
    """Rows for results the smoke run never produces (GPU-only cases), in the shapes the sections record."""
    from bench.gpu import sections

    step = {"loss": 11.9, "ln_vocab": 11.76, "loss_ok": True, "tokens_per_s": 8e4, "mfu": 0.31}
    rows = sections.SECTIONS["megatron_te"]().summary({"causal": step, "thd_packed": step})
    assert [r[0] for r in rows] == ["causal", "thd_packed"] and "MFU 31.0%" in rows[0][1]
    train = {"models": {"8b": {"lengths": {"131072": {"status": "oom", "peak_alloc_bytes": 2**37},
                                           "262144": "skipped: out of memory at 128K tokens"}}}}  # fmt: skip
    rows = sections.SECTIONS["train_step"]().summary(train)
    assert rows == [("8b @ 128K", "OOM (peak 128.0 GiB)"), ("8b @ 256K", "skipped: out of memory at 128K tokens")]


@pytest.mark.distributed
def test_an_offload_try_runs_in_its_own_process_and_a_slow_one_is_stopped(tmp_path):
    """One real try (DeepSpeed ZeRO-3, one gloo rank, CPU), then the same try with too little time."""
    from bench.gpu.sec_offload import run_isolated

    req = {"spec": "tiny-b", "layers": 1, "tokens": 128, "doc_len": 64, "loss_chunk": 96, "dtype": "float32",
           "device": "cpu"}  # fmt: skip
    done = run_isolated(req, 90, tmp_path)
    assert done["status"] == "ok" and done["docs"] == 2 and done["loss"] > 0, done
    assert run_isolated(req, 0.5, tmp_path)["status"] == "timeout"
