"""sbatch command lines built from a recipe's ``launch`` section, for ``slurm/train_1m.sh`` and ``slurm/eval.sh``.

    cmd = train_command(recipe.cfg, "recipes/tiny_cpu/pretrain_1.yaml", ["train.steps=6"], cpu=True)
    print(shlex.join(cmd))          # what `lcr launch RECIPE --dry-run` prints
    job_id = submit(cmd)

    python -m lcrecipes.launch.sbatch vars RECIPE [overrides]   # for slurm/train_1m.sh: NUL-terminated values

Commands are argv lists, never shell strings: a recipe path or override holding spaces, quotes or ``$(...)``
reaches the script as one argument, unexpanded. ``cpu=True`` asks for no GPUs (``--gpus-per-node=0``, which
overrides the scripts' ``#SBATCH --gpus-per-node``): each task is then a gloo rank on CPU.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from lcrecipes.config import ConfigError, LaunchConfig, RecipeConfig, load_recipe

TRAIN_SCRIPT = "slurm/train_1m.sh"
EVAL_SCRIPT = "slurm/eval.sh"
PREEMPT_SIGNAL = "USR1"  # what lcrecipes.train.signals.StopRequest handles (with SIGTERM)


class LaunchError(RuntimeError):
    """A submission failed or a launch is misconfigured; the message holds Slurm's answer."""


def collective_timeout_s(seq_len: int) -> int:
    """Collective (NCCL/gloo) timeout in seconds sized to the sequence length in tokens: 10 min + 1 s per 512
    tokens (1M tokens: ~44 min). The same formula as ``slurm/train_1m.sh``."""
    return 600 + seq_len // 512


def job_name(cfg: RecipeConfig, prefix: str = "lcr") -> str:
    """``lcr-<recipe name>`` with every character outside ``[A-Za-z0-9._-]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{prefix}-{cfg.name}")


def resource_flags(launch: LaunchConfig, *, cpu: bool, nodes: int | None = None,
                   tasks_per_node: int | None = None) -> list[str]:
    """sbatch flags for the allocation: nodes, tasks (one per GPU), GPUs, CPUs, memory, time, partition..."""
    nodes = launch.nodes if nodes is None else nodes
    tasks = launch.gpus_per_node if tasks_per_node is None else tasks_per_node
    flags = [f"--nodes={nodes}", f"--ntasks-per-node={tasks}", f"--gpus-per-node={0 if cpu else tasks}",
             f"--cpus-per-task={launch.cpus_per_task}", f"--time={launch.time_min}"]
    if launch.mem_gb > 0:
        flags.append(f"--mem={launch.mem_gb}G")
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(launch, key) is not None:
            flags.append(f"--{key}={getattr(launch, key)}")
    return flags


def preemption_flags(launch: LaunchConfig, target: str = "") -> list[str]:
    """USR1 ``launch.signal_s`` seconds before the time limit, to every task (``target`` "") or to the batch
    shell only ("B:", for scripts that run Python without srun); requeue allowed or not. Always given: a script's
    own ``#SBATCH --signal`` lead could exceed a shorter ``--time`` and fall due at once."""
    flags = [f"--signal={target}{PREEMPT_SIGNAL}@{launch.signal_s}"] if launch.signal_s > 0 else []
    return flags + ["--requeue" if launch.requeue else "--no-requeue"]


def train_command(cfg: RecipeConfig, recipe: str | Path, overrides: list[str], *, cpu: bool,
                  script: str | Path = TRAIN_SCRIPT, extra: list[str] | None = None) -> list[str]:
    """``sbatch ... slurm/train_1m.sh RECIPE [overrides]`` for the recipe's launch section."""
    flags = [f"--job-name={job_name(cfg)}", *resource_flags(cfg.launch, cpu=cpu), *preemption_flags(cfg.launch)]
    return ["sbatch", "--parsable", *flags, *(extra or []), str(script), str(recipe), *overrides]


def eval_array_command(cfg: RecipeConfig, model: str | Path, suite: str | Path, strategy: str, out: str | Path,
                       n_slices: int, *, cpu: bool, label: str | None = None, script: str | Path = EVAL_SCRIPT,
                       extra: list[str] | None = None) -> list[str]:
    """``sbatch --array=0-(n-1) ... slurm/eval.sh MODEL SUITE STRATEGY OUT [LABEL]``: one single-task job per
    slice; ``label`` names the model in the rows (default: the runner's, from the model dir)."""
    if n_slices < 1:
        raise LaunchError(f"{suite}: the suite has no (task, setting) slice to run")
    flags = [f"--job-name={job_name(cfg, 'lcr-eval')}", f"--array=0-{n_slices - 1}",
             *resource_flags(cfg.launch, cpu=cpu, nodes=1, tasks_per_node=1), *preemption_flags(cfg.launch, "B:")]
    args = [str(model), str(suite), strategy, str(out), *([label] if label else [])]
    return ["sbatch", "--parsable", *flags, *(extra or []), str(script), *args]


def submit(cmd: list[str], cwd: str | Path | None = None) -> str:
    """Run an ``sbatch --parsable`` command; returns the job id. Slurm's error is raised as a LaunchError."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise LaunchError(f"{cmd[0]} is not on PATH: is this a Slurm login node?") from None
    if proc.returncode != 0:
        raise LaunchError(f"{cmd[0]} failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]


def job_vars(cfg: RecipeConfig) -> dict[str, str]:
    """What ``slurm/train_1m.sh`` needs from the recipe, resolved in one Python start (imports take seconds)."""
    return {"RUN_DIR": cfg.run_dir, "TIMEOUT_S": str(collective_timeout_s(cfg.data.seq_len)),
            "MAX_REQUEUES": str(cfg.launch.max_requeues)}


def main(argv: list[str] | None = None) -> int:
    """``vars RECIPE [overrides]``: print :func:`job_vars`' values in order, each ended by a NUL byte (safe for any
    character; read them with ``mapfile -d ''``)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] != "vars":
        print("usage: python -m lcrecipes.launch.sbatch vars RECIPE [section.key=value ...]", file=sys.stderr)
        return 2
    try:
        values = job_vars(load_recipe(argv[1], argv[2:]).cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write("".join(v + "\0" for v in values.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
