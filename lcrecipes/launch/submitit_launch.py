"""Launch from Python through submitit, configured from a recipe's ``launch`` section.

    launcher = SubmititLauncher.from_recipe("recipes/tiny_cpu/pretrain_1.yaml", ["train.steps=6"], cpu=True)
    print(launcher.sbatch_text())             # the sbatch file submitit would submit (--dry-run)
    job = launcher.submit_train()             # one task per GPU (gloo rank on CPU), LcrJob in each
    wait(job)                                 # rank 0's result; a failed job raises LaunchError with its log

    jobs = launcher.submit_eval(model, suite, strategy, out)   # job array, one task per (task, setting)

Parameters: partition, account, qos, constraint, nodes, tasks per node (= launch.gpus_per_node), GPUs per node
(none with ``cpu``), cpus_per_task, mem_gb, time_min. Preemption: ``--signal=USR1@launch.signal_s`` (the signal
``lcr train`` saves on, as under ``slurm/train_1m.sh``; submitit's own handler is switched to USR1 too, through
``SUBMITIT_PREEMPT_SIGNAL`` in the sbatch setup) and ``--requeue``, at most ``launch.max_requeues`` times.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lcrecipes.config import LaunchConfig, Recipe, RecipeConfig, load_recipe
from lcrecipes.launch.eval_array import EvalSliceJob, Merged, eval_slices, merge_slices
from lcrecipes.launch.job import LcrJob
from lcrecipes.launch.sbatch import PREEMPT_SIGNAL, LaunchError, collective_timeout_s, job_name

log = logging.getLogger(__name__)


def executor_params(launch: LaunchConfig, *, name: str, cpu: bool, nodes: int | None = None,
                    tasks_per_node: int | None = None) -> dict:
    """``SlurmExecutor.update_parameters`` keywords for the launch section (tasks per node = GPUs per node)."""
    tasks = launch.gpus_per_node if tasks_per_node is None else tasks_per_node
    extra: dict = {"signal": f"{PREEMPT_SIGNAL}@{launch.signal_s}"}
    extra["requeue" if launch.requeue else "no-requeue"] = True
    params = dict(job_name=name, nodes=launch.nodes if nodes is None else nodes, ntasks_per_node=tasks,
                  cpus_per_task=launch.cpus_per_task, time=launch.time_min, signal_delay_s=launch.signal_s,
                  setup=[f"export SUBMITIT_PREEMPT_SIGNAL={PREEMPT_SIGNAL}"], additional_parameters=extra,
                  srun_args=["--wait=60"],  # a crashed rank takes the others down 60 s later (train_1m.sh too)
                  gpus_per_node=0 if cpu else tasks)  # fmt: skip
    if launch.mem_gb > 0:
        params["mem"] = f"{launch.mem_gb}GB"
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(launch, key) is not None:
            params[key] = getattr(launch, key)
    return params


def eval_label(cfg: RecipeConfig) -> str:
    """The model's name in eval rows when a recipe is evaluated (as ``lcr eval RECIPE`` names it)."""
    return cfg.name.replace("/", "-")


def job_env(cfg: RecipeConfig, workdir: Path) -> dict[str, str]:
    """Variables every training task gets: threads, NCCL timeouts sized to the sequence, extension cache."""
    timeout = collective_timeout_s(cfg.data.seq_len)
    return {"OMP_NUM_THREADS": str(cfg.launch.cpus_per_task), "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
            "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": str(timeout),
            "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(workdir / ".torch_extensions"))}


@dataclass
class SubmititLauncher:
    """A recipe (path + overrides) and where submitit keeps its files (``<run_dir>/submitit`` by default)."""

    recipe: Recipe
    recipe_path: str
    overrides: list[str]
    cpu: bool = False
    folder: Path | None = None
    workdir: Path = field(default_factory=Path.cwd)

    @classmethod
    def from_recipe(cls, recipe_path: str | Path, overrides: list[str] | None = None, **kw) -> SubmititLauncher:
        overrides = list(overrides or [])
        return cls(load_recipe(recipe_path, overrides), str(recipe_path), overrides, **kw)

    @property
    def cfg(self) -> RecipeConfig:
        return self.recipe.cfg

    def _folder(self) -> Path:
        folder = self.folder or Path(self.cfg.run_dir) / "submitit"
        return (self.workdir / folder).resolve()

    def train_params(self) -> dict:
        params = executor_params(self.cfg.launch, name=job_name(self.cfg), cpu=self.cpu)
        params["setup"].append(_comment(f"each task runs (pickled): lcr {shlex.join(self.train_job().argv)}"))
        return params

    def eval_params(self) -> dict:
        return executor_params(self.cfg.launch, name=job_name(self.cfg, "lcr-eval"), cpu=self.cpu, nodes=1,
                               tasks_per_node=1)

    def train_job(self) -> LcrJob:
        timeout = f"parallel.timeout_s={collective_timeout_s(self.cfg.data.seq_len)}"
        argv = ["train", self.recipe_path, timeout, *self.overrides]  # the user's overrides win
        return LcrJob(argv, self.workdir, job_env(self.cfg, self.workdir), self.cfg.launch.max_requeues)

    def sbatch_text(self, params: dict | None = None, array_size: int | None = None) -> str:
        """The sbatch file submitit writes for these parameters, from submitit's own builder (no Slurm needed)."""
        from submitit.slurm.slurm import _make_sbatch_string

        folder = self._folder()
        command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
        return _make_sbatch_string(command=command, folder=folder, map_count=array_size,
                                   **(params or self.train_params()))

    def executor(self, params: dict):
        import submitit

        ex = submitit.SlurmExecutor(folder=self._folder(), max_num_timeout=self.cfg.launch.max_requeues)
        ex.update_parameters(**params)
        return ex

    def submit_train(self):
        """Submit the training job; returns the submitit Job (``job.job_id``, ``wait(job)``)."""
        with _sbatch_errors():
            job = self.executor(self.train_params()).submit(self.train_job())
        log.info("submitted %s as job %s (logs in %s)", self.recipe_path, job.job_id, self._folder())
        return job

    def submit_eval(self, model: str | Path, suite: str | Path, strategy: str, out: str | Path) -> list:
        """One array task per (task, setting) slice of the suite; returns the jobs, in slice order."""
        from lcrecipes.eval.suite import load_suite

        n = len(eval_slices(load_suite(suite)))
        fn = EvalSliceJob(model, suite, strategy, out, self.workdir, label=eval_label(self.cfg))
        with _sbatch_errors():
            jobs = self.executor(self.eval_params()).map_array(fn, list(range(n)))
        log.info("submitted %d eval slices as array %s", n, jobs[0].job_id.split("_")[0] if jobs else "-")
        return jobs


@contextlib.contextmanager
def _sbatch_errors() -> Iterator[None]:
    """sbatch's own refusal (bad partition, no Slurm config...) as a one-line LaunchError."""
    from submitit.core.utils import FailedJobError

    try:
        yield
    except FailedJobError as e:
        raise LaunchError(f"sbatch refused the job: {str(e).strip()}") from None
    except RuntimeError as e:
        if "srun" not in str(e):
            raise
        raise LaunchError(f"{e} (submitit needs the Slurm client tools)") from None


def _comment(text: str) -> str:
    """A shell comment line; line breaks in user values are escaped so nothing after them can run."""
    return "# " + text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _stderr_tail(job, lines: int = 20) -> str:
    """The last ``lines`` lines of rank 0's stderr, without Python warnings (each is two lines)."""
    try:
        text = job.stderr() or ""
    except Exception:  # noqa: BLE001 - the log is a courtesy; the job's own error is raised regardless
        text = ""
    kept, skip_next = [], False
    for line in text.strip().splitlines():
        if skip_next and line.startswith("  "):
            skip_next = False
            continue
        skip_next = "Warning: " in line
        if not skip_next:
            kept.append(line)
    return "\n".join(kept[-lines:])


def _reason(error: Exception) -> str | None:
    """The exception line at the end of a job's traceback (``JobFailed: rank 0: ...``), or None."""
    lines = [re.sub(r"^\[rank\d+\]: ", "", x) for x in str(error).strip().splitlines()]
    ends = [i for i, x in enumerate(lines) if x.startswith("-----")] + [len(lines)]
    starts = [i for i, x in enumerate(lines) if re.match(r"^[\w.]+(Error|Failed|Exception)\b.*: ", x)]
    if not starts:
        return None
    return "\n".join(lines[starts[-1]:min(e for e in ends if e > starts[-1])]).strip()


def wait(job):
    """Block until the job ends; returns rank 0's result. A failed job raises LaunchError with the job's own
    error line, or, when it left none (killed, out of memory...), Slurm's verdict and the end of rank 0's log."""
    try:
        return job.results()[0]
    except Exception as e:
        reason = _reason(e)
        if reason is None:
            tail = _stderr_tail(job, 15)
            reason = f"{str(e).strip()}\n--- end of {job.paths.stderr} ---\n{tail}"
        raise LaunchError(f"job {job.job_id} failed: {reason}\n(logs: {job.paths.stderr})") from None


def wait_eval(jobs: list, out: str | Path, suite: str | Path) -> Merged:
    """Wait for every slice; a failed slice raises (naming its index); then merge the rows."""
    failed = []
    for i, job in enumerate(jobs):
        try:
            wait(job)
        except LaunchError as e:
            failed.append(f"slice {i}: {e}")
    if failed:
        raise LaunchError(f"{len(failed)} of {len(jobs)} eval slices failed:\n" + "\n".join(failed))
    merged = merge_slices(out, suite)
    if merged is None:
        raise LaunchError(f"{out}: every slice job ended but some slices are not marked done")
    return merged
