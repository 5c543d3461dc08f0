"""``lcr prepare RECIPE [overrides]``: turn the recipe's data source into packed train/eval shards.

Rerunning skips finished shards; a changed input or config rebuilds them (see lcrecipes/data/prepare.py).
"""

from __future__ import annotations

import argparse
import logging

from lcrecipes.config import load_recipe, save_resolved

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--split", action="append", choices=["train", "eval"], help="only these splits (default both)")


def main(args: argparse.Namespace) -> int:
    from lcrecipes.data.prepare import SPLITS, prepare

    recipe = load_recipe(args.recipe, args.overrides)
    cfg = recipe.cfg
    save_resolved(recipe, cfg.run_dir)
    out = prepare(cfg.data, cfg.strategy.name, cfg.data.out_dir, splits=args.split or SPLITS)
    log.info("shards ready in %s", out)
    return 0
