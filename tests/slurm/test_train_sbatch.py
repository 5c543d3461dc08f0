"""``sbatch slurm/train_1m.sh`` on the local dev Slurm: the tiny CPU recipe on 2 tasks (gloo, ZeRO-3, CP=2).

- an uninterrupted run trains, checkpoints and logs into its run dir; it is the reference for the others;
- ``scontrol requeue`` mid-run: the ranks save on SIGTERM, Slurm requeues, the second run resumes from ``latest``
  and ends with the reference's losses (fp32 on CPU: equal to 1e-6);
- the time-limit signal (``--signal=USR1@120``): once training runs, the test shortens the job's time limit so the
  warning falls due at slurmctld's next check (it checks every 30 s, so training must last > 30 s after that); the
  ranks save, exit 75, the script requeues; the test gives the pending job its long limit back and the second run
  resumes to the reference's losses;
- a run that cannot start (no data, a bad override) fails with its exit code and the reason in its logs.

The recipe is a copy of recipes/tiny_cpu in a directory whose name, like the run dir's, holds spaces, quotes and
``$(...)``: nothing may be interpreted by a shell. Each test takes 1-3 minutes (most of it Python start-up).

    bash slurm/dev/start.sh && .venv/bin/pytest -m slurm tests/slurm/test_train_sbatch.py -v
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.slurm.test_dev_cluster import PARTITION, _wait_final, slurm_cluster  # noqa: F401 (autouse fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
HOSTILE = "dir $(touch PWNED) 'q' \"d\""
SEQ, STEPS = 128, 200
TOL = 1e-6
CPU_TASKS = [f"--partition={PARTITION}", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0",
             "--cpus-per-task=1"]  # fmt: skip


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """A hostile-named copy of the tiny recipes, synthetic packed shards, and the uninterrupted reference run."""
    from lcrecipes.train.synthetic import write_synthetic_shards

    tmp = tmp_path_factory.mktemp("train_sbatch")
    recipes = tmp / f"recipes {HOSTILE}"
    shutil.copytree(REPO / "recipes" / "tiny_cpu", recipes / "tiny_cpu")
    shutil.copytree(REPO / "recipes" / "_base", recipes / "_base")
    data = write_synthetic_shards(tmp / "data", seq_len=SEQ, n_train=16, n_eval=4, vocab_size=2048)
    w = {"tmp": tmp, "recipe": str(recipes / "tiny_cpu" / "pretrain_1.yaml"), "data": str(data)}
    w["ref"] = _submit(w, "ref")
    return w


def _overrides(w: dict, run: str, **extra: str) -> list[str]:
    values = {"run_dir": f"{w['tmp']}/run {run} {HOSTILE}", "data.out_dir": w["data"], "data.seq_len": SEQ,
              "data.context_tokens": SEQ // 2, "train.steps": STEPS, "train.warmup_steps": 5,
              "checkpoint.every": 50, "train.eval_batches": 1, "train.tensorboard": "false", **extra}  # fmt: skip
    return [f"{k}={v}" for k, v in values.items()]


def _submit(w: dict, run: str, *sbatch_args: str, **extra: str) -> dict:
    """Submit train_1m.sh from the repo (LCR_HOME = submit dir); returns {job, run_dir, out}. The script's own
    ``--signal=USR1@600`` would fall due at once under a 10-minute limit: the default here is USR1@30."""
    out = w["tmp"] / f"slurm-{run}.out"
    overrides = _overrides(w, run, **extra)
    cmd = ["sbatch", "--parsable", *CPU_TASKS, "--time=10", "--signal=USR1@30", f"--output={out}", *sbatch_args,
           "slurm/train_1m.sh", w["recipe"], *overrides]  # fmt: skip
    job = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    return {"job": job, "run_dir": Path(overrides[0].split("=", 1)[1]), "out": out}


def _train_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "logs" / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    return [r for r in rows if r["kind"] == "train"]


def _wait_for_step(r: dict, step: int, timeout_s: float = 150) -> int:
    """Poll the metrics until training reaches ``step``; returns the step seen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = _train_rows(r["run_dir"])
        if rows and rows[-1]["step"] >= step:
            return rows[-1]["step"]
        time.sleep(0.3)
    raise TimeoutError(f"job {r['job']} did not reach step {step}: {_tail(r['out'])}")


def _tail(path: Path, n: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no output)"


def _done(r: dict, timeout_s: float = 170) -> str:
    state = _wait_final(r["job"], timeout_s)
    assert state == ("COMPLETED", "0:0"), f"job {r['job']}: {state}\n{_tail(r['out'])}"
    return (r["run_dir"] / "logs" / "train.log").read_text()


def _assert_same_losses(r: dict, ref: dict) -> None:
    rows, ref_rows = _train_rows(r["run_dir"]), _train_rows(ref["run_dir"])
    assert [x["step"] for x in rows] == list(range(1, STEPS + 1))  # every step once: the resumed ones replaced
    assert [x["loss"] for x in rows] == pytest.approx([x["loss"] for x in ref_rows], rel=TOL, abs=TOL)


def _restarts(job: str) -> int:
    text = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    m = re.search(r"\bRestarts=(\d+)", text)
    return int(m.group(1)) if m else -1


def test_sbatch_trains_checkpoints_and_logs_in_the_run_dir(work: dict) -> None:
    ref = work["ref"]
    log = _done(ref)
    assert not list(REPO.glob("PWNED*")) and not list(work["tmp"].glob("**/PWNED*"))
    ckpts = ref["run_dir"] / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == f"step_{STEPS}"
    assert sorted(p.name for p in ckpts.glob("step_*")) == [f"step_{STEPS - 50}", f"step_{STEPS}"]  # keep_last=2
    assert [r["step"] for r in _train_rows(ref["run_dir"])] == list(range(1, STEPS + 1))
    assert "resumed" not in log
    slurm_log = (ref["run_dir"] / "logs" / f"slurm-{ref['job']}.log").read_text()
    assert f"restart 0: {work['recipe']} run_dir={ref['run_dir']}" in slurm_log  # the values, uninterpreted
    assert f"timeout_s={600 + SEQ // 512}" in slurm_log and f"step {STEPS}/{STEPS}" in slurm_log


def test_scontrol_requeue_mid_run_resumes_to_the_same_losses(work: dict) -> None:
    _done(work["ref"])
    r = _submit(work, "requeue")
    seen = _wait_for_step(r, 3)
    subprocess.run(["scontrol", "requeue", r["job"]], check=True)
    log = _done(r)
    assert _restarts(r["job"]) == 1
    saved = re.search(r"resumed from .*step_(\d+) at step (\d+)", log)
    assert saved and seen <= int(saved.group(2)) < 50, log  # saved on SIGTERM, not at a periodic checkpoint
    assert "received SIGTERM" in log
    _assert_same_losses(r, work["ref"])


def test_time_limit_signal_saves_requeues_and_resumes_to_the_same_losses(work: dict) -> None:
    _done(work["ref"])
    r = _submit(work, "signal", "--signal=USR1@120")
    _wait_for_step(r, 2)
    _shorten_limit_so_the_warning_is_due(r["job"])
    _restore_limit_once_requeued(r)
    log = _done(r)
    assert "received SIGUSR1" in log and _restarts(r["job"]) == 1
    slurm_log = (r["run_dir"] / "logs" / f"slurm-{r['job']}.log").read_text()
    assert "checkpoint saved on signal; requeueing job" in slurm_log and "restart 1:" in slurm_log
    resumed = re.search(r"resumed from .* at step (\d+)", log)
    assert resumed and 2 <= int(resumed.group(1)) < STEPS
    _assert_same_losses(r, work["ref"])


def _run_time_s(job: str) -> int:
    text = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    h, m, s = (int(x) for x in re.search(r"\bRunTime=(?:\d+-)?(\d+):(\d+):(\d+)", text).groups())
    return 3600 * h + 60 * m + s


def _shorten_limit_so_the_warning_is_due(job: str) -> None:
    """Time limit = 60-120 s from now, so the USR1@120 warning is due at slurmctld's next check (<= 30 s)."""
    minutes = _run_time_s(job) // 60 + 2
    subprocess.run(["scontrol", "update", f"JobId={job}", f"TimeLimit={minutes}"], check=True)


def _restore_limit_once_requeued(r: dict, timeout_s: float = 120) -> None:
    """Once the job is back in the queue, give it 10 minutes again (its second run must not be warned)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _restarts(r["job"]) >= 1:
            subprocess.run(["scontrol", "update", f"JobId={r['job']}", "TimeLimit=10"], check=True)
            return
        time.sleep(0.3)
    raise TimeoutError(f"job {r['job']} was not requeued after the time-limit warning:\n{_tail(r['out'])}")


def test_failed_runs_surface_their_error(work: dict) -> None:
    no_data = _submit(work, "nodata", **{"data.out_dir": f"{work['tmp']}/missing data"})
    bad = _submit(work, "bad", "--ntasks-per-node=1", **{"train.steps": "many"})
    assert _wait_final(no_data["job"], 150) == ("FAILED", "2:0")  # every rank's code, none killed by srun
    assert "no packed train shards" in no_data["out"].read_text()
    assert "no packed train shards" in next((no_data["run_dir"] / "logs").glob("slurm-*.log")).read_text()
    assert _wait_final(bad["job"], 150) == ("FAILED", "2:0")
    text = bad["out"].read_text()
    assert "train.steps" in text and "cannot resolve recipe" in text
