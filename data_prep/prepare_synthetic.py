"""Packed shards from the synthetic world (no downloads); trains the tiny tokenizer when tokenizer=train.

    python data_prep/prepare_synthetic.py --strategy doc_ids --out runs/data/synthetic-8k \
        seq_len=8192 context_tokens=7168 num_train=512 num_eval=32 synthetic.domain=mixed
    python data_prep/prepare_synthetic.py --kind lm --out runs/data/synthetic-lm num_train=400

Arguments after the options are DataConfig overrides (``key=value``, see lcrecipes/data/config.py). Rerunning
skips finished shards; a changed config rebuilds.
"""

from __future__ import annotations

import argparse
import logging

from lcrecipes.data.config import data_config
from lcrecipes.data.prepare import prepare


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategy", default="doc_ids", help="training target (kind=qa)")
    p.add_argument("--kind", default="qa", choices=["qa", "lm"])
    p.add_argument("--out", required=True, help="output directory (train/, eval/, tokenizer/, cache/)")
    p.add_argument("overrides", nargs="*", help="DataConfig key=value")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = data_config(args.overrides, source="synthetic", kind=args.kind, out_dir=args.out)
    print(prepare(cfg, args.strategy if args.kind == "qa" else None))


if __name__ == "__main__":
    main()
