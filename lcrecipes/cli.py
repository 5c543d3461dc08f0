"""``lcr``: the one command. ``lcr config show RECIPE [section.key=value ...]`` prints the resolved recipe.

Verbs: config, prepare, train, preflight, convert, eval, report, run, demo, launch, plan. Each verb's module is imported
only when it runs, so ``lcr config show`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from lcrecipes.config import ConfigError

log = logging.getLogger("lcrecipes")

# verb -> (module with `add_arguments(parser)` and `main(args) -> int`, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "config": ("lcrecipes.commands.config", "show or validate a resolved recipe"),
    "convert": ("lcrecipes.commands.convert", "convert checkpoints: megatron/deepspeed/hf -> hf/megatron"),
    "train": ("lcrecipes.commands.train", "train a recipe (one rank; run under torchrun/srun for more)"),
    "preflight": ("lcrecipes.commands.preflight", "check the recipe's CP against CP=1 on its own data"),
    "plan": ("lcrecipes.commands.plan", "predict per-GPU memory and recommend a layout"),
    "prepare": ("lcrecipes.commands.prepare", "write packed train/eval shards for a recipe"),
    "eval": ("lcrecipes.eval.runner", "evaluate a recipe's model (or an HF dir) on a suite"),
    "report": ("lcrecipes.eval.report", "write the report of eval run dirs"),
    "run": ("lcrecipes.commands.run", "the whole pipeline (prepare, train, convert, eval, report), resumable"),
    "demo": ("lcrecipes.commands.demo", "the embedded tiny study on CPU, end to end (--fast: the 5-minute variant)"),
    "launch": ("lcrecipes.commands.launch", "submit a recipe's training or eval sweep to Slurm (sbatch or submitit)"),
}
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lcr", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, (module, help_) in VERBS.items():
        p = sub.add_parser(verb, help=help_)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(func=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"lcr {args.verb}: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
