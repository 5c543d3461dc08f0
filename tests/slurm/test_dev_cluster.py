"""The local dev Slurm (slurm/dev/start.sh) runs real jobs: multi-task srun, accounting, signals, submitit.

    slurm/dev/start.sh && .venv/bin/pytest -m slurm tests/slurm -v

Skipped when `sinfo` is not on PATH or the cluster is not up. SLURM_CONF is taken from the environment, else
from $LCR_SLURM_DIR/etc/slurm.conf (default /tmp/lcr-slurm). Takes ~40 s, most of it waiting for the
time-limit signal (slurmctld checks time limits every 30 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}
PARTITION = "debug"


def _slurm_conf() -> Path:
    if "SLURM_CONF" in os.environ:
        return Path(os.environ["SLURM_CONF"])
    return Path(os.environ.get("LCR_SLURM_DIR", "/tmp/lcr-slurm")) / "etc" / "slurm.conf"


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster() -> Iterator[Path]:
    """Skip unless the dev cluster answers; export SLURM_CONF for the clients (sbatch, sacct, submitit)."""
    if shutil.which("sinfo") is None:
        pytest.skip("sinfo is not on PATH: start the dev cluster with slurm/dev/start.sh")
    conf = _slurm_conf()
    if not conf.is_file():
        pytest.skip(f"no Slurm config at {conf}: start the dev cluster with slurm/dev/start.sh")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cmd = ["sinfo", "-h", "-p", PARTITION, "-o", "%t"]
    try:  # a stopped controller makes sinfo retry for ~10 s
        sinfo = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        pytest.skip(f"dev Slurm cluster is not up ({conf}): sinfo gave no answer in 5 s")
    if sinfo.returncode != 0 or not {"idle", "mix", "alloc"} & set(sinfo.stdout.split()):
        pytest.skip(f"dev Slurm cluster is not up ({conf}): {(sinfo.stdout + sinfo.stderr).strip()!r}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(conf))
        yield conf


def _sbatch(workdir: Path, *args: str) -> str:
    """Submit with sbatch in `workdir`; returns the job id."""
    cmd = ["sbatch", "--parsable", f"--partition={PARTITION}", f"--chdir={workdir}", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return out.strip().split(";")[0]


def _sacct_state(job_id: str) -> tuple[str, str]:
    """(State, ExitCode) of the job allocation as sacct reports it; ("", "") while not yet recorded."""
    cmd = ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode"]
    lines = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    if not lines:
        return "", ""
    state, exit_code = lines[0].split("|")
    return state.split()[0], exit_code


def _wait_final(job_id: str, timeout_s: float = 90.0) -> tuple[str, str]:
    """Poll sacct until the job reaches a final state; returns (State, ExitCode as 'code:signal')."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state, exit_code = _sacct_state(job_id)
        if state in FINAL_STATES:
            return state, exit_code
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} not finished after {timeout_s} s (sacct state {state!r})")


def test_two_task_job_runs_srun_and_completes(tmp_path: Path) -> None:
    # single quotes: each task expands its own SLURM_PROCID, not the batch shell's
    job = _sbatch(tmp_path, "--ntasks=2", "--output=out.txt", "--wrap", "srun bash -c 'echo rank=$SLURM_PROCID'")
    assert _wait_final(job) == ("COMPLETED", "0:0")
    lines = (tmp_path / "out.txt").read_text().split()
    assert sorted(lines) == ["rank=0", "rank=1"]


def test_failing_job_is_failed_with_its_exit_code(tmp_path: Path) -> None:
    job = _sbatch(tmp_path, "--output=out.txt", "--wrap", "echo about to fail; exit 3")
    assert _wait_final(job) == ("FAILED", "3:0")
    assert (tmp_path / "out.txt").read_text().strip() == "about to fail"


# First run: the time-limit warning (USR1) reaches the batch shell, which requeues the job, as a preempted
# training job does. Second run (SLURM_RESTART_COUNT=1): record the restart and finish.
REQUEUE_ON_SIGNAL = """#!/bin/bash
if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then
  trap 'echo got USR1 > batch.sig; scontrol requeue $SLURM_JOB_ID; sleep 30' USR1
  while true; do sleep 1; done
fi
echo "restart $SLURM_RESTART_COUNT" > restarted
"""
# A job step traps the signal itself (no B: prefix: Slurm signals the steps, not the batch shell).
STEP_TRAP = "trap 'echo got USR1 > step.sig; exit 0' USR1; while true; do sleep 1; done"


def test_time_limit_signal_reaches_batch_shell_and_steps_and_requeue_restarts(tmp_path: Path) -> None:
    """USR1 comes ~10-30 s into a 1-minute job with @50 (slurmctld checks limits every 30 s); ~25-45 s total."""
    (tmp_path / "batch.sh").write_text(REQUEUE_ON_SIGNAL)
    (tmp_path / "step.sh").write_text(STEP_TRAP + "\n")
    batch_job = _sbatch(tmp_path, "--time=1", "--signal=B:USR1@50", "--output=batch.out", str(tmp_path / "batch.sh"))
    step_job = _sbatch(tmp_path, "--time=1", "--signal=USR1@50", "--output=step.out", "--wrap", "srun bash step.sh")
    # Both end COMPLETED before their time limit; TIMEOUT would mean that no signal came.
    assert _wait_final(step_job) == ("COMPLETED", "0:0")
    assert (tmp_path / "step.sig").read_text().strip() == "got USR1"
    assert _wait_final(batch_job) == ("COMPLETED", "0:0")
    assert (tmp_path / "batch.sig").read_text().strip() == "got USR1"
    assert (tmp_path / "restarted").read_text().strip() == "restart 1"


def test_submitit_runs_a_python_function(tmp_path: Path) -> None:
    submitit = pytest.importorskip("submitit")

    def square_in_job(x: int) -> tuple[int, str]:  # nested: pickled by value, the job need not import tests
        return x * x, os.environ["SLURM_JOB_ID"]

    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(slurm_partition=PARTITION, timeout_min=2, tasks_per_node=1, cpus_per_task=1)
    job = executor.submit(square_in_job, 7)
    assert job.result() == (49, job.job_id)
    assert _wait_final(job.job_id)[0] == "COMPLETED"
