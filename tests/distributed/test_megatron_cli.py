"""The tiny CPU recipe (``recipes/tiny_cpu/pretrain_1.yaml``) through the real ``lcr`` command line with
``parallel.backend=megatron``, shrunk by overrides (4 steps, 256-token sequences, 8 sequences):

- ``lcr prepare`` writes the shards (and trains the tokenizer);
- ``lcr train`` at CP=2 on 2 gloo ranks (torchrun) logs step / loss lines, writes a checkpoint (dist checkpoint +
  ``state.json``, ``latest``) and its losses equal a one-process CP=1 ``lcr train`` of the same recipe (1e-5
  relative, fp32), as do its eval loss and grad norms;
- ``lcr preflight`` at CP=2 passes (exit 0, PASS).

Megatron-Core runs on CPU through ``tests/megatron_lcr.py``, which installs the test fixture
``tests/megatron_cpu.py`` and calls ``lcrecipes.cli.main``. About 2 minutes on 2 cores (mostly process start-up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
RECIPE = "recipes/tiny_cpu/pretrain_1.yaml"
ENTRY = "tests/megatron_lcr.py"
STEPS = 4
TOL = 1e-5


def _overrides(root: Path, run: str) -> list[str]:
    values = {"root": root, "run_dir": root / "runs" / run, "parallel.backend": "megatron", "train.steps": STEPS,
              "data.num_train": 8, "data.num_eval": 2, "data.seq_len": 256, "data.context_tokens": 128,
              "data.synthetic.lm_doc_passages": 2, "data.synthetic.lm_doc_questions": 0,
              "data.synthetic.repeat_attributes": "false", "checkpoint.every": STEPS, "train.eval_batches": 1,
              "train.tensorboard": "false"}
    return [f"{k}={v}" for k, v in values.items()]


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", ENTRY, *args]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("megatron_cli")
    _run([sys.executable, "-m", "lcrecipes.cli", "prepare", RECIPE, *_overrides(root, "prepare")])
    return root


@pytest.fixture(scope="module")
def cp2_run(root) -> subprocess.CompletedProcess:
    return _run(_torchrun("train", RECIPE, *_overrides(root, "cp2")))


def test_train_at_cp2_logs_steps_and_writes_a_checkpoint(root, cp2_run) -> None:
    from lcrecipes.checkpoint import CheckpointManager

    log = cp2_run.stdout + cp2_run.stderr
    assert all(f"step {s}/{STEPS} | loss " in log for s in range(1, STEPS + 1)), log[-3000:]
    latest = CheckpointManager(root / "runs" / "cp2" / "checkpoints").latest()
    assert latest.name == f"step_{STEPS}" and (latest / "model" / "metadata.json").is_file()
    state = json.loads((latest / "state.json").read_text())
    assert state["step"] == STEPS and state["backend"] == "megatron" and state["world_size"] == 2


def test_cp2_losses_equal_the_one_process_cp1_run(root, cp2_run) -> None:
    _run([sys.executable, ENTRY, "train", RECIPE, *_overrides(root, "cp1"), "parallel.cp=1",
          "launch.gpus_per_node=1"])
    rows = {run: _metrics(root / "runs" / run) for run in ("cp1", "cp2")}
    train = {run: [r for r in rows[run] if r["kind"] == "train"] for run in rows}
    assert [r["step"] for r in train["cp2"]] == list(range(1, STEPS + 1))
    for key in ("loss", "grad_norm"):
        for a, b in zip(train["cp2"], train["cp1"], strict=True):
            assert abs(a[key] - b[key]) <= TOL * abs(b[key]), (key, train)
    evals = {run: [r["loss"] for r in rows[run] if r["kind"] == "eval"] for run in rows}
    assert len(evals["cp2"]) == 1 and abs(evals["cp2"][0] - evals["cp1"][0]) <= TOL * evals["cp1"][0], evals


def test_preflight_at_cp2_passes(root) -> None:
    out = _run(_torchrun("preflight", RECIPE, *_overrides(root, "preflight"), "--steps", "2"))
    assert "PASS: CP=2" in out.stdout, out.stdout + out.stderr[-3000:]
