"""Write the synthetic eval sets a suite reads (in-domain at each length, out-of-domain finance QA and MC) with
data prep's example builder, from a recipe's data section and tokenizer.

    python eval/make_synthetic_sets.py recipes/tiny_cpu/doc_ids.yaml --suite eval/suites/tiny_cpu.yaml

Files that already exist are kept (rerunning only writes the missing ones); ``--num`` examples per file (default:
the suite's limit, else 8).
"""

import argparse
import logging
import sys
from dataclasses import replace

from lcrecipes.config import load_recipe
from lcrecipes.data.prepare import build_examples, write_examples_jsonl
from lcrecipes.eval.suite import load_suite

# suite task -> (synthetic domain, which examples to keep: all | short-answer | multiple choice)
TASK_DOMAINS = {
    "synthetic_in_domain": ("in_domain", "all"),
    "synthetic_ood_qa": ("out_of_domain", "qa"),
    "synthetic_ood_mc": ("out_of_domain", "mc"),
}
KEEP = {"all": lambda ex: True, "qa": lambda ex: ex.choices is None, "mc": lambda ex: ex.choices is not None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--suite", required=True)
    p.add_argument("--num", type=int, default=None)
    p.add_argument("--tokenizer", default=None, help="default: the recipe's data.tokenizer")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe overrides, as for lcr run (e.g. data.synthetic.questions=[birthplace])")
    args = p.parse_args()
    data, suite = load_recipe(args.recipe, args.overrides).cfg.data, load_suite(args.suite)
    for spec in suite.tasks:
        if spec.name not in TASK_DOMAINS:
            continue
        domain, keep = TASK_DOMAINS[spec.name]
        num = args.num or spec.limit or suite.limit or 8
        for length, path in spec.files():
            if path.exists():
                logging.info("%s exists; kept", path)
                continue
            cfg = replace(data, out_dir=str(path.parent / "_build"))  # data prep's caches, beside the sets
            pool = build_examples(cfg, "eval", domain, context_tokens=length, num=4 * num, tokenizer=args.tokenizer)
            kept = [ex for ex in pool if KEEP[keep](ex)][:num]
            logging.info("%s: %d examples", path, write_examples_jsonl(kept, path))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
