"""``lcr run RECIPE [RECIPE ...] [--set k=v ...] [--report DIR]``: the whole pipeline for each recipe, resumable.

    lcr run recipes/tiny_cpu/base.yaml recipes/tiny_cpu/answer_only.yaml --report runs/tiny_cpu/report

Stages (prepare, train, convert, eval data, eval) whose outputs exist and are valid are skipped, so rerunning
after an interruption continues where it stopped. ``--set`` overrides apply to every recipe.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipes", nargs="+", help="recipe YAMLs, run in order (put the base model's first)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="section.key=value applied to every recipe (repeatable)")
    p.add_argument("--report", default=None, help="write one report over all recipes' eval runs here")


def main(args: argparse.Namespace) -> int:
    from lcrecipes.pipeline import run_and_print, run_study

    return run_and_print(lambda: run_study(args.recipes, args.overrides, args.report), "lcr run")
