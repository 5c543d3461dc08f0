"""``lcr demo [--fast]``: the embedded study on CPU, end to end (what ``make demo`` runs).

    lcr demo          # base + the five strategies, the tiny_cpu suite, report in runs/tiny_cpu/report
    lcr demo --fast   # base + answer_only + doc_ids, shorter training, the small suite, in runs/fast/

It is ``lcr run`` over the tiny_cpu recipes with fixed overrides, defined here once so that ``make demo``, the
README and the end-to-end test run the same thing. Paths are relative to the working directory (the repo root).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

STRATEGIES = ("answer_only", "doc_ids", "ids_content", "ids_quotes", "reasoning")


@dataclass(frozen=True)
class Demo:
    recipes: tuple[str, ...]
    overrides: tuple[str, ...]
    report: str


FULL = Demo(
    recipes=("recipes/tiny_cpu/base.yaml", *(f"recipes/tiny_cpu/{s}.yaml" for s in STRATEGIES)),
    overrides=(),
    report="runs/tiny_cpu/report",
)
FAST = Demo(
    recipes=("recipes/tiny_cpu/base.yaml", "recipes/tiny_cpu/answer_only.yaml", "recipes/tiny_cpu/doc_ids.yaml"),
    overrides=("root=runs/fast", "train.steps=60", "data.num_train=192", "eval.suite=eval/suites/tiny_cpu_fast.yaml"),
    report="runs/fast/tiny_cpu/report",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fast", action="store_true", help="base + answer_only + doc_ids, the small suite (runs/fast)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra section.key=value for every recipe (after the demo's own)")


def main(args: argparse.Namespace) -> int:
    from lcrecipes.commands.run import main as run_main

    demo = FAST if args.fast else FULL
    run_args = argparse.Namespace(recipes=list(demo.recipes), overrides=[*demo.overrides, *args.overrides],
                                  report=demo.report)
    return run_main(run_args)
