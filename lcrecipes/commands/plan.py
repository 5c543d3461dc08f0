"""``lcr plan RECIPE [overrides] [--gpu-mem-gb G]``: predicted per-GPU memory and a layout that fits."""

from __future__ import annotations

import argparse
import json

from lcrecipes.config import load_recipe
from lcrecipes.launch.plan import GiB, format_plan, plan, recommend


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--gpu-mem-gb", type=float, default=80.0, help="memory of one GPU (GiB)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    cfg = load_recipe(args.recipe, args.overrides).cfg
    mine, best = plan(cfg), recommend(cfg, args.gpu_mem_gb * GiB)
    if args.json:
        print(json.dumps({"recipe": mine.row(), "recommended": best.row() if best else None}, indent=2))
        return 0
    fits = mine.total <= args.gpu_mem_gb * GiB * 0.9
    print(f"recipe ({'fits' if fits else 'does NOT fit'} in {args.gpu_mem_gb:g} GiB with 10% headroom)")
    print(format_plan(mine))
    print("recommended:" if best else f"no layout fits in {args.gpu_mem_gb:g} GiB")
    if best:
        print(format_plan(best))
    return 0 if fits else 1
