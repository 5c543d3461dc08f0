"""``lcr launch`` on the local dev Slurm: submitit training and eval arrays, sbatch eval arrays, failures.

- ``lcr launch RECIPE --submitit --cpu`` trains the tiny recipe on 2 tasks (distributed env from Slurm's) and
  returns once the job has completed;
- the submitit job's requeue hook: USR1 mid-run (``scancel --signal``) -> the ranks save and exit 75, rank 0
  requeues, the second run resumes from ``latest`` and ``wait(job)`` returns;
- a job that fails surfaces the reason (the task's error, from its log) and a non-zero exit;
- an eval suite of 3 tasks runs as a 3-task job array, through submitit and through ``slurm/eval.sh``, and the rows
  are merged into one ``predictions.jsonl`` equal (bar timings) to a whole-suite run.

    bash slurm/dev/start.sh && .venv/bin/pytest -m slurm tests/slurm/test_launch_submitit.py -v
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm.test_dev_cluster import PARTITION, _wait_final, slurm_cluster  # noqa: F401 (autouse fixture)
from tests.unit.test_launch_eval import TIMING, make_eval_setup

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]
RECIPE = "recipes/tiny_cpu/pretrain_1.yaml"
EVAL_RECIPE = "recipes/tiny_cpu/doc_ids.yaml"
HOSTILE = "$(touch PWNED) 'q' \"d\""
SEQ = 128
LAUNCH = [f"launch.partition={PARTITION}", "launch.time_min=5", "launch.signal_s=30"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from lcrecipes.train.synthetic import write_synthetic_shards

    return write_synthetic_shards(tmp_path_factory.mktemp("submitit") / "data", seq_len=SEQ, n_train=16, n_eval=4,
                                  vocab_size=2048)  # fmt: skip


def _train_overrides(run_dir: Path, data: Path, steps: int) -> list[str]:
    return [f"run_dir={run_dir}", f"data.out_dir={data}", f"data.seq_len={SEQ}", f"data.context_tokens={SEQ // 2}",
            f"train.steps={steps}", "train.warmup_steps=1", "checkpoint.every=0", "train.eval_batches=1",
            "train.tensorboard=false", *LAUNCH]  # fmt: skip


def _launch(*args: str, timeout: float = 170) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lcrecipes.cli", "launch", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _steps(run_dir: Path) -> list[int]:
    path = run_dir / "logs" / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    return [r["step"] for r in rows if r["kind"] == "train"]


def test_submitit_trains_the_tiny_recipe_and_returns(data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _launch(RECIPE, "--submitit", "--cpu", *_train_overrides(run_dir, data, 6))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = re.search(r"job (\d+) completed", proc.stdout).group(1)
    assert _wait_final(job) == ("COMPLETED", "0:0")
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_6"
    assert _steps(run_dir) == [1, 2, 3, 4, 5, 6]
    assert len(list((run_dir / "submitit").glob(f"{job}_*_result.pkl"))) == 2  # one result per rank


@pytest.mark.slow
def test_submitit_job_saves_on_signal_requeues_and_resumes(data: Path, tmp_path: Path) -> None:
    from lcrecipes.launch.submitit_launch import SubmititLauncher, wait

    run_dir, steps = tmp_path / "run", 40
    launcher = SubmititLauncher.from_recipe(RECIPE, _train_overrides(run_dir, data, steps), cpu=True, workdir=REPO)
    job = launcher.submit_train()
    deadline = time.monotonic() + 150
    while not _steps(run_dir) or _steps(run_dir)[-1] < 2:
        assert time.monotonic() < deadline, f"job {job.job_id} did not start training: {job.stderr()}"
        time.sleep(0.3)
    subprocess.run(["scancel", "--signal=USR1", job.job_id], check=True)
    assert wait(job) == 0
    log = (run_dir / "logs" / "train.log").read_text()
    assert "received SIGUSR1" in log and re.search(r"resumed from .*step_\d+ at step \d+", log), log
    assert "requeueing job" in (job.paths.stderr.read_text() + job.paths.stdout.read_text())
    assert _steps(run_dir) == list(range(1, steps + 1))


def test_a_failed_submitit_job_surfaces_its_error(data: Path, tmp_path: Path) -> None:
    proc = _launch(RECIPE, "--submitit", "--cpu", *_train_overrides(tmp_path / "run", tmp_path / "no data", 6))
    assert proc.returncode == 1
    assert "failed" in proc.stderr and "no packed train shards" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> dict:
    """3 tasks x full context = 3 slices, and the rows of a whole-suite run (the reference)."""
    from lcrecipes.eval.runner import read_rows, run_eval

    s = make_eval_setup(tmp_path_factory.mktemp("eval_array"), {"full": True})
    s["whole"] = read_rows(run_eval(s["model"], s["suite"], "doc_ids", Path(s["suite"]).parent / "whole",
                                    label="tiny_cpu-doc_ids").parent)  # the label `lcr eval RECIPE` gives
    return s


def _assert_merged(out: Path, s: dict) -> None:
    from lcrecipes.eval.runner import read_rows

    strip = lambda rows: {r["key"]: {k: v for k, v in r.items() if k not in TIMING} for r in rows}  # noqa: E731
    assert len(s["whole"]) == 3 and strip(read_rows(out)) == strip(s["whole"])
    assert sorted(p.name for p in (out / "slices").iterdir()) == ["0000", "0001", "0002"]


def _eval_args(s: dict, out: Path) -> list[str]:
    return [EVAL_RECIPE, "--eval", "--cpu", "--model", s["model"], "--suite", s["suite"], "--out", str(out), *LAUNCH]


def test_eval_array_through_submitit_completes_and_merges(suite: dict, tmp_path: Path) -> None:
    out = tmp_path / f"eval {HOSTILE}"
    proc = _launch(*_eval_args(suite, out), "--submitit", f"run_dir={tmp_path}/run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{out / 'predictions.jsonl'}: 3 rows from 3 slices" in proc.stdout
    _assert_merged(out, suite)


def test_eval_sh_array_completes_and_merges(suite: dict, tmp_path: Path) -> None:
    out = tmp_path / f"eval {HOSTILE}"
    logs = f"--sbatch-arg=--output={tmp_path}/eval-%A_%a.out"
    proc = _launch(*_eval_args(suite, out), logs)
    assert proc.returncode == 0, proc.stderr
    array = proc.stdout.strip()
    for i in range(3):
        assert _wait_final(f"{array}_{i}", 150) == ("COMPLETED", "0:0"), (tmp_path / f"eval-{array}_{i}.out")
    _assert_merged(out, suite)
    assert not list(REPO.glob("PWNED*")) and not list(tmp_path.glob("**/PWNED*"))


def test_a_failed_eval_slice_surfaces_its_error(suite: dict, tmp_path: Path) -> None:
    args = _eval_args(suite, tmp_path / "out")
    args[args.index("--model") + 1] = str(tmp_path / "no model")
    proc = _launch(*args, "--submitit", f"run_dir={tmp_path}/run")
    assert proc.returncode == 1
    assert "3 of 3 eval slices failed" in proc.stderr and "no model" in proc.stderr, proc.stderr
