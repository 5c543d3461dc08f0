"""``lcr preflight RECIPE [section.key=value ...]``: a few steps at CP=1 and at the recipe's CP on the recipe's
data; prints the loss and grad-norm differences and PASS/FAIL (exit 0/1). Run it with the recipe's ranks:

    torchrun --nproc_per_node 2 -m lcrecipes.cli preflight recipes/tiny_cpu/pretrain_1.yaml --steps 3
"""

from __future__ import annotations

import argparse
import sys

from lcrecipes.config import load_recipe


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per run (default 3)")
    p.add_argument("--loss-tol", type=float, default=None, help="relative loss tolerance (default by dtype)")
    p.add_argument("--grad-tol", type=float, default=None, help="relative grad-norm tolerance (default by dtype)")


def main(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from lcrecipes.launch.env import DistEnvError
    from lcrecipes.train import preflight
    from lcrecipes.train.data import MissingDataError

    recipe = load_recipe(args.recipe, args.overrides)
    try:
        report = preflight(recipe, steps=args.steps, loss_tol=args.loss_tol, grad_tol=args.grad_tol)
    except (MissingDataError, DistEnvError) as e:
        print(f"lcr preflight: {e}", file=sys.stderr)
        return 2
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(report.table())
    return 0 if report.passed else 1
