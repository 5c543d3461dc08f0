"""``lcr prepare RECIPE [overrides]``: turn the recipe's data source into packed train/eval shards.

Rerunning skips finished shards; a changed input or config rebuilds them (see lcrecipes/data/prepare.py). A
document longer than ``data.seq_len`` or a bad input record ends it with one line naming the recipe keys or the
input file and line (exit code 2), not a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from lcrecipes.config import load_recipe, save_resolved

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--split", action="append", choices=["train", "eval"], help="only these splits (default both)")


def main(args: argparse.Namespace) -> int:
    from lcrecipes.data.errors import DataError
    from lcrecipes.data.packing import OverlongError
    from lcrecipes.data.prepare import SPLITS, prepare

    recipe = load_recipe(args.recipe, args.overrides)
    cfg, d = recipe.cfg, recipe.cfg.data
    save_resolved(recipe, cfg.run_dir)
    try:
        out = prepare(d, cfg.strategy.name, d.out_dir, splits=args.split or SPLITS)
    except OverlongError as e:
        keys = f"data.seq_len={d.seq_len}, data.overlong={d.overlong}"
        keys += f", data.context_tokens={d.context_tokens}" if d.kind == "qa" else ""
        return _fail(f"{args.recipe}: {e} (recipe keys: {keys})")
    except DataError as e:
        skippable = e.reason != "unreadable_file" and d.on_bad_record == "error"
        return _fail(f"{e}" + (" (data.on_bad_record=skip counts such records instead)" if skippable else ""))
    log.info("shards ready in %s", out)
    return 0


def _fail(message: str) -> int:
    print(f"lcr prepare: {message}", file=sys.stderr)
    return 2
