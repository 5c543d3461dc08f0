"""``lcr config show RECIPE [k=v ...]`` prints the resolved YAML; ``lcr config validate RECIPE...`` checks files."""

from __future__ import annotations

import argparse
import sys

from lcrecipes.config import ConfigError, load_recipe


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="print the resolved recipe as YAML")
    show.add_argument("recipe")
    show.add_argument("overrides", nargs="*", help="section.key=value")
    val = sub.add_parser("validate", help="validate one or more recipes")
    val.add_argument("recipes", nargs="+")


def main(args: argparse.Namespace) -> int:
    if args.action == "show":
        print(load_recipe(args.recipe, args.overrides).to_yaml(), end="")
        return 0
    failed = 0
    for path in args.recipes:
        try:
            load_recipe(path)
            print(f"ok      {path}")
        except ConfigError as e:
            failed += 1
            print(f"invalid {e}", file=sys.stderr)
    return 1 if failed else 0
