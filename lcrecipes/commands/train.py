"""``lcr train RECIPE [section.key=value ...]``: train a recipe (one process, or one rank under torchrun/srun).

    lcr train recipes/tiny_cpu/pretrain_1.yaml launch.gpus_per_node=1 parallel.cp=1
    torchrun --nproc_per_node 2 -m lcrecipes.cli train recipes/tiny_cpu/pretrain_1.yaml

Resumes from ``<run_dir>/checkpoints/latest`` (``checkpoint.resume=auto``). Exit code 75 means a checkpoint was
saved on SIGUSR1/SIGTERM and the job should be requeued.
"""

from __future__ import annotations

import argparse
import sys

from lcrecipes.config import load_recipe


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("overrides", nargs="*", help="section.key=value")


def main(args: argparse.Namespace) -> int:
    from lcrecipes.checkpoint import CheckpointError
    from lcrecipes.data.shards import ShardError
    from lcrecipes.launch.env import DistEnvError
    from lcrecipes.train import train
    from lcrecipes.train.data import MissingDataError

    recipe = load_recipe(args.recipe, args.overrides)
    if recipe.cfg.train.steps == 0:
        print(f"lcr train: {recipe.path}: train.steps is 0 (the recipe evaluates model.hf_path as it is); "
              "nothing to train", file=sys.stderr)
        return 2
    try:
        return train(recipe)
    except (MissingDataError, DistEnvError, CheckpointError, ShardError) as e:
        print(f"lcr train: {e}", file=sys.stderr)
        return 2
