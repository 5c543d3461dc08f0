"""``lcr config show RECIPE [k=v ...]`` prints the resolved YAML; ``lcr config validate RECIPE...`` checks files;
``lcr config get RECIPE KEY [k=v ...]`` prints one resolved value (for shell scripts)."""

from __future__ import annotations

import argparse
import sys

from omegaconf import OmegaConf

from lcrecipes.config import ConfigError, load_recipe

_MISSING = object()


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="print the resolved recipe as YAML")
    show.add_argument("recipe")
    show.add_argument("overrides", nargs="*", help="section.key=value")
    val = sub.add_parser("validate", help="validate one or more recipes")
    val.add_argument("recipes", nargs="+")
    get = sub.add_parser("get", help="print one resolved value, e.g. run_dir or data.seq_len")
    get.add_argument("recipe")
    get.add_argument("key")
    get.add_argument("overrides", nargs="*", help="section.key=value")


def main(args: argparse.Namespace) -> int:
    if args.action == "show":
        print(load_recipe(args.recipe, args.overrides).to_yaml(), end="")
        return 0
    if args.action == "get":
        value = OmegaConf.select(OmegaConf.structured(load_recipe(args.recipe, args.overrides).cfg), args.key,
                                 default=_MISSING)
        if value is _MISSING:
            raise ConfigError(args.recipe, args.key, "no such key")
        print(OmegaConf.to_yaml(value).strip() if OmegaConf.is_config(value) else value)
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
