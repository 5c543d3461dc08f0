"""``lcr launch RECIPE [options] [section.key=value ...]``: submit a recipe's training (or eval sweep) to Slurm.

    lcr launch recipes/qwen2.5-7b-1m/doc_ids.yaml                     # sbatch slurm/train_1m.sh, flags from launch:
    lcr launch recipes/qwen2.5-7b-1m/doc_ids.yaml --dry-run           # print that sbatch command
    lcr launch recipes/tiny_cpu/pretrain_1.yaml --submitit --cpu train.steps=6   # through submitit; waits, then returns
    lcr launch recipes/tiny_cpu/pretrain_1.yaml --submitit --dry-run  # print the sbatch file submitit would submit
    lcr launch recipes/tiny_cpu/doc_ids.yaml --eval [--suite S] [--model HF_DIR] [--submitit]   # job array

Options may come before or after the overrides. ``--cpu`` requests no GPUs (each task is a gloo rank on CPU).
An eval sweep runs one array task per (task, setting) of the suite (``eval.suite`` by default) on the recipe's
HF export (``eval.hf_dir``, else ``<run_dir>/hf``) and merges the rows into ``<run_dir>/eval/<suite name>/``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from lcrecipes.config import ConfigError, RecipeConfig, load_recipe
from lcrecipes.launch import sbatch
from lcrecipes.launch.sbatch import LaunchError


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--submitit", action="store_true", help="submit through submitit (and wait) instead of sbatch")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted; submit nothing")
    p.add_argument("--cpu", action="store_true", help="request no GPUs: each task is a gloo rank on CPU")
    p.add_argument("--no-wait", action="store_true", help="--submitit: return once submitted")
    p.add_argument("--folder", default=None, help="--submitit: its folder (default <run_dir>/submitit)")
    p.add_argument("--eval", action="store_true", help="run the eval suite as a job array instead of training")
    p.add_argument("--suite", default=None, help="--eval: suite file (default: the recipe's eval.suite)")
    p.add_argument("--model", default=None, help="--eval: HF dir (default: eval.hf_dir, else <run_dir>/hf)")
    p.add_argument("--out", default=None, help="--eval: rows dir (default <run_dir>/eval/<suite name>)")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="extra sbatch argument, e.g. --sbatch-arg=--output=x.out (sbatch mode; repeatable)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe")
    _add_options(p)
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="section.key=value (options may be mixed in)")


def _split_options(args: argparse.Namespace) -> argparse.Namespace:
    """Options given after the recipe land in ``overrides`` (argparse REMAINDER); parse them out again."""
    p = argparse.ArgumentParser(prog="lcr launch", add_help=False)
    _add_options(p)
    p.add_argument("dotlist", nargs="*")
    rest = p.parse_intermixed_args(args.overrides)
    for key, value in vars(rest).items():
        if key != "dotlist" and value not in (False, None, []):
            setattr(args, key, value)
    args.overrides = rest.dotlist
    return args


def _eval_target(cfg: RecipeConfig, args: argparse.Namespace) -> tuple[str, str, str]:
    """(model dir, suite file, out dir) of an eval sweep, from the options or the recipe."""
    from lcrecipes.eval.suite import load_suite

    suite = args.suite or cfg.eval.suite
    if suite is None:
        raise ConfigError(args.recipe, "eval.suite", "no eval suite: set eval.suite or pass --suite")
    model = args.model or cfg.eval_model_dir()
    out = args.out or str(Path(cfg.run_dir) / "eval" / load_suite(suite).name)
    return model, suite, out


def _sbatch_mode(args: argparse.Namespace) -> int:
    cfg = load_recipe(args.recipe, args.overrides).cfg
    if args.eval:
        from lcrecipes.eval.suite import load_suite
        from lcrecipes.launch.eval_array import eval_slices
        from lcrecipes.launch.submitit_launch import eval_label

        model, suite, out = _eval_target(cfg, args)
        n = len(eval_slices(load_suite(suite)))
        cmd = sbatch.eval_array_command(cfg, model, suite, cfg.strategy.name, out, n, cpu=args.cpu,
                                        label=eval_label(cfg), extra=args.sbatch_arg)
    else:
        cmd = sbatch.train_command(cfg, args.recipe, args.overrides, cpu=args.cpu, extra=args.sbatch_arg)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    print(sbatch.submit(cmd))
    return 0


def _submitit_mode(args: argparse.Namespace) -> int:
    from lcrecipes.launch.submitit_launch import SubmititLauncher, wait

    launcher = SubmititLauncher.from_recipe(args.recipe, args.overrides, cpu=args.cpu,
                                            folder=Path(args.folder) if args.folder else None)
    if args.eval:
        return _submitit_eval(launcher, args)
    if args.dry_run:
        print(launcher.sbatch_text(), end="")
        return 0
    job = launcher.submit_train()
    print(f"job {job.job_id}: lcr train {args.recipe}; logs: {job.paths.stdout}", flush=True)
    if not args.no_wait:
        wait(job)
        print(f"job {job.job_id} completed; run dir: {launcher.cfg.run_dir}")
    return 0


def _submitit_eval(launcher, args: argparse.Namespace) -> int:
    from lcrecipes.eval.suite import load_suite
    from lcrecipes.launch.eval_array import eval_slices
    from lcrecipes.launch.submitit_launch import wait_eval

    model, suite, out = _eval_target(launcher.cfg, args)
    if args.dry_run:
        print(launcher.sbatch_text(launcher.eval_params(), len(eval_slices(load_suite(suite)))), end="")
        return 0
    jobs = launcher.submit_eval(model, suite, launcher.cfg.strategy.name, out)
    print(f"eval array {jobs[0].job_id.split('_')[0]}: {len(jobs)} slices -> {out}", flush=True)
    if not args.no_wait:
        merged = wait_eval(jobs, out, suite)
        print(f"{merged.path}: {merged.n_rows} rows from {merged.n_slices} slices")
    return 0


def main(args: argparse.Namespace) -> int:
    args = _split_options(args)
    try:
        return _submitit_mode(args) if args.submitit else _sbatch_mode(args)
    except LaunchError as e:
        print(f"lcr launch: {e}", file=sys.stderr)
        return 1
