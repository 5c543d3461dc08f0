"""One rank dying (``os._exit(1)``) or hanging (SIGSTOP) in the middle of an optimizer step, after its
forward/backward: the other rank exits non-zero with a message naming the failure within ``parallel.timeout_s``
(20 s here) of the fault; nothing hangs.

Two launchers: torchrun (its agent tears the job down and names the failed rank) and two plain processes with
the torchrun variables set, as srun starts them (the survivor must notice by itself: a closed connection, or the
collective timeout). The fault is injected by ``bench/fault_trainer.py`` (``FAULT_RANK_DEATH``), the real trainer
runs otherwise unchanged (DeepSpeed ZeRO-3, CP=2 ring attention on 2 gloo ranks).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.distributed._spawn import free_port
from tests.reliability.conftest import REPO, lcr_env, write_recipe

pytestmark = pytest.mark.distributed
TIMEOUT_S = 20
SLACK_S = 15  # process teardown on a loaded 2-core machine
WRAPPER = str(REPO / "bench" / "fault_trainer.py")


def _recipe(tiny_data: Path, name: str) -> Path:
    return write_recipe(tiny_data, name, parallel={"cp": 2, "timeout_s": TIMEOUT_S}, launch={"gpus_per_node": 2},
                        train={"steps": 6})  # fmt: skip


def _fault(how: str) -> dict[str, str]:
    return {"FAULT_RANK_DEATH": json.dumps({"step": 3, "rank": 1, "how": how})}


def _wait_for(path: Path, text: str, procs: list, timeout: float = 240) -> float:
    """Poll ``path`` until it holds ``text``; returns the time it did (fails if every process ended first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return time.monotonic()
        assert any(p.poll() is None for p in procs), path.read_text(errors="replace")[-3000:]
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} not in {path} after {timeout} s")


def _wait_exit(proc: subprocess.Popen, timeout: float) -> tuple[int | None, float]:
    try:
        return proc.wait(timeout=timeout), time.monotonic()
    except subprocess.TimeoutExpired:
        return None, time.monotonic()


def _kill(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_torchrun_job_fails_fast_naming_the_dead_rank(tiny_data, tmp_path) -> None:
    log = tmp_path / "torchrun.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", WRAPPER, "train",
           str(_recipe(tiny_data, "death_torchrun"))]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=lcr_env(**_fault("exit")), stdout=out, stderr=subprocess.STDOUT)
    try:
        died = _wait_for(log, "fault_trainer: rank 1 exits in step 3", [proc])
        code, ended = _wait_exit(proc, TIMEOUT_S + SLACK_S)
    finally:
        _kill(proc)
    text = log.read_text(errors="replace")
    assert code not in (None, 0), text[-3000:]
    assert ended - died <= TIMEOUT_S + SLACK_S
    assert "Root Cause" in text and "rank      : 1" in text and "exitcode  : 1" in text, text[-3000:]


def _plain_ranks(recipe: Path, tmp: Path, how: str) -> tuple[list[subprocess.Popen], list[Path]]:
    """Two ``lcr train`` processes wired by RANK/WORLD_SIZE/MASTER_* (as srun's tasks are), logs per rank."""
    port, procs, logs = free_port(), [], []
    for rank in range(2):
        env = lcr_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), **_fault(how))  # fmt: skip
        logs.append(tmp / f"rank{rank}.log")
        with open(logs[-1], "w") as out:
            procs.append(subprocess.Popen([sys.executable, WRAPPER, "train", str(recipe)], cwd=REPO, env=env,
                                          stdout=out, stderr=subprocess.STDOUT))  # fmt: skip
    return procs, logs


def _last_error(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def test_survivor_of_a_dead_peer_exits_with_a_connection_error(tiny_data, tmp_path) -> None:
    procs, logs = _plain_ranks(_recipe(tiny_data, "death_plain"), tmp_path, "exit")
    try:
        died = _wait_for(logs[1], "fault_trainer: rank 1 exits in step 3", procs)
        code, ended = _wait_exit(procs[0], TIMEOUT_S + SLACK_S)
    finally:
        _kill(*procs)
    assert code not in (None, 0), logs[0].read_text()[-3000:]
    assert ended - died <= TIMEOUT_S + SLACK_S
    last = _last_error(logs[0])
    assert "Error" in last and any(w in last for w in ("Connection", "closed", "reset", "Timed out")), last


@pytest.mark.slow
def test_survivor_of_a_hung_peer_times_out_after_timeout_s(tiny_data, tmp_path) -> None:
    procs, logs = _plain_ranks(_recipe(tiny_data, "hang_plain"), tmp_path, "hang")
    try:
        hung = _wait_for(logs[1], "fault_trainer: rank 1 hangs in step 3", procs)
        code, ended = _wait_exit(procs[0], TIMEOUT_S + SLACK_S)
        assert procs[1].poll() is None  # still stopped: rank 0 left on its own
    finally:
        if procs[1].poll() is None:
            os.kill(procs[1].pid, signal.SIGKILL)
        _kill(*procs)
    assert code not in (None, 0), logs[0].read_text()[-3000:]
    assert TIMEOUT_S - 2 <= ended - hung <= TIMEOUT_S + SLACK_S, ended - hung
    assert "Timed out" in _last_error(logs[0]), _last_error(logs[0])
