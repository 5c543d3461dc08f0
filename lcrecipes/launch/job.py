"""The callable that submitit runs in every Slurm task: one ``lcr`` command, with save-and-requeue.

    job = LcrJob(["train", "recipes/tiny_cpu/pretrain_1.yaml", "train.steps=6"], workdir="/path/to/repo")
    executor.submit(job)            # each task: cd workdir, export RANK/WORLD_SIZE/..., run `lcr train ...`

Preemption, the same protocol as ``slurm/train_1m.sh``: USR1 before the time limit (or SIGTERM on preemption)
reaches every task; ``lcr train`` saves a checkpoint at the next step boundary and exits with
``PREEMPTED_EXIT_CODE`` (75); rank 0 then runs ``scontrol requeue`` (at most ``max_requeues`` times) and the
requeued job resumes from ``<run_dir>/checkpoints/latest``. A signal that arrives before the trainer has installed
its handler goes to submitit's, which calls :meth:`LcrJob.checkpoint` and requeues the same command.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


class JobFailed(RuntimeError):
    """The ``lcr`` command of a task exited non-zero; submitit reports this message as the job's error."""


class _StderrTail(io.TextIOBase):
    """Writes through to ``stream`` and keeps its last ``n`` non-empty lines (the reason a command failed)."""

    def __init__(self, stream, n: int = 5) -> None:
        self.stream, self.lines, self._part = stream, collections.deque(maxlen=n), ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        *done, self._part = (self._part + text).split("\n")
        self.lines.extend(line for line in done if line.strip())
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()


def run_lcr(argv: list[str]) -> int:
    """``lcr ARGV`` in this process; returns its exit code (a ``SystemExit`` is turned into its code)."""
    from lcrecipes.cli import main

    try:
        return int(main(list(argv)) or 0)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def restart_count(environ: dict | None = None) -> int:
    """How many times Slurm has requeued this job (``SLURM_RESTART_COUNT``; unset on the first run)."""
    environ = os.environ if environ is None else environ
    return int(environ.get("SLURM_RESTART_COUNT") or 0)


class LcrJob:
    """Run ``lcr <argv>`` in the task that calls it; picklable (plain fields), so submitit can requeue it.

    ``env`` is exported before the command runs (e.g. ``OMP_NUM_THREADS``); the distributed variables
    (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) come from Slurm's through ``lcrecipes.launch.env``.
    """

    def __init__(self, argv: list[str], workdir: str | Path, env: dict[str, str] | None = None,
                 max_requeues: int = 0) -> None:
        self.argv, self.workdir = [str(a) for a in argv], str(Path(workdir).resolve())
        self.env, self.max_requeues = dict(env or {}), max_requeues

    def __repr__(self) -> str:
        return f"LcrJob(lcr {' '.join(self.argv)!r} in {self.workdir})"

    def __call__(self) -> int:
        from lcrecipes.launch.env import PREEMPTED_EXIT_CODE, detect_env

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        os.chdir(self.workdir)
        os.environ.update(self.env)
        dist_env = detect_env()
        dist_env.export()
        log.info("rank %d/%d: lcr %s", dist_env.rank, dist_env.world_size, " ".join(self.argv))
        tail = _StderrTail(sys.stderr)
        with contextlib.redirect_stderr(tail):
            code = run_lcr(self.argv)
        if code == PREEMPTED_EXIT_CODE:
            self._requeue(dist_env.rank)
        if code != 0:
            said = "\n".join(tail.lines)
            raise JobFailed(f"rank {dist_env.rank}: `lcr {self.argv[0]}` exited with code {code}" +
                            (f": {said}" if said else ""))
        return code

    def _requeue(self, rank: int) -> None:
        """After a save on signal: rank 0 requeues the job (if allowed); every rank leaves without a result."""
        from lcrecipes.launch.env import PREEMPTED_EXIT_CODE

        restarts, job_id = restart_count(), os.environ.get("SLURM_JOB_ID")
        if restarts >= self.max_requeues or job_id is None:
            raise JobFailed(f"checkpoint saved on a signal, but not requeued: restart {restarts} of at most "
                            f"{self.max_requeues} (launch.max_requeues); resume by launching again")
        if rank == 0:
            log.warning("checkpoint saved on a signal; requeueing job %s (restart %d)", job_id, restarts + 1)
            subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
        sys.exit(PREEMPTED_EXIT_CODE)  # not an Exception: submitit writes no result, the requeued run will

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on its preemption signal: requeue the same command (it resumes from latest)."""
        import submitit

        return submitit.helpers.DelayedSubmission(LcrJob(self.argv, self.workdir, self.env, self.max_requeues),
                                                  *args, **kwargs)
