"""``lcr demo [--fast] [--pretrain]``: the embedded study on CPU, end to end (what ``make demo`` runs).

    lcr demo             # base + the five strategies, the tiny_cpu suite, report in runs/tiny_cpu/report
    lcr demo --fast      # base + answer_only + doc_ids, the small suite, in runs/fast/
    lcr demo --pretrain  # first pretrain the base model afresh (pretrain_1, pretrain_2: ~25 min) and start from it

It is ``lcr run`` over the tiny_cpu recipes with fixed overrides, defined here once so that ``make demo``, the
README and the end-to-end test run the same thing. Paths are relative to the working directory (the repo root).

The base model is the tiny Llama in ``recipes/tiny_cpu/pretrained``, pretrained once by ``pretrain_1.yaml`` and
``pretrain_2.yaml`` (in-context lookup takes a few million tokens to form, more than a 20-minute demo can spend, so
it ships, as the study starts from a released Qwen). ``--pretrain`` reruns those two recipes under the demo's root
and points every recipe at their export instead.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

STRATEGIES = ("answer_only", "doc_ids", "ids_content", "ids_quotes", "reasoning")
PRETRAIN = ("recipes/tiny_cpu/pretrain_1.yaml", "recipes/tiny_cpu/pretrain_2.yaml")
PRETRAINED = "tiny_cpu/pretrain_2/hf"  # under the demo's root
BASE = "recipes/tiny_cpu/base.yaml"


@dataclass(frozen=True)
class Demo:
    root: str
    recipes: tuple[str, ...]
    overrides: tuple[str, ...]
    report: str


FULL = Demo(
    root="runs",
    recipes=(BASE, *(f"recipes/tiny_cpu/{s}.yaml" for s in STRATEGIES)),
    overrides=(),
    report="runs/tiny_cpu/report",
)
FAST = Demo(
    root="runs/fast",
    recipes=(BASE, "recipes/tiny_cpu/answer_only.yaml", "recipes/tiny_cpu/doc_ids.yaml"),
    overrides=("root=runs/fast", "eval.suite=eval/suites/tiny_cpu_fast.yaml"),
    report="runs/fast/tiny_cpu/report",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fast", action="store_true", help="base + answer_only + doc_ids, the small suite (runs/fast)")
    p.add_argument("--pretrain", action="store_true",
                   help="pretrain the base model afresh (recipes/tiny_cpu/pretrain_*.yaml) instead of the shipped one")
    p.add_argument("--steps", type=int, default=None,
                   help="train.steps for the recipes that train (pretraining, fine-tunes), not the base model's 0")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra section.key=value for every recipe (after the demo's own)")


def main(args: argparse.Namespace) -> int:
    from lcrecipes.pipeline import run_and_print, run_study

    demo = FAST if args.fast else FULL
    steps = [f"train.steps={args.steps}"] if args.steps is not None else []

    def run() -> list:
        overrides = [*demo.overrides, *args.overrides]
        if args.pretrain:
            # the user's --set applies to pretraining too (not the demo's eval suite: pretraining has no eval)
            run_study(list(PRETRAIN), [f"root={demo.root}", *args.overrides], None, {p: steps for p in PRETRAIN})
            model = f"{demo.root}/{PRETRAINED}"
            overrides = [f"model.hf_path={model}", f"data.tokenizer={model}", *overrides]
        return run_study(list(demo.recipes), overrides, demo.report, {p: steps for p in demo.recipes if p != BASE})

    return run_and_print(run, "lcr demo")
