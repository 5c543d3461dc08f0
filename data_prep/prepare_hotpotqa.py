"""Packed shards from HotpotQA (distractor setting) or 2WikiMultihopQA questions plus a passage corpus.

    python data_prep/prepare_hotpotqa.py --source hotpotqa --strategy ids_quotes --out runs/data/hotpot-32k \
        train_path=data/hotpot_train_v1.1.json eval_path=data/hotpot_dev_distractor_v1.json \
        corpus_path=data/wiki_passages.jsonl tokenizer=models/Qwen2.5-7B-Instruct-1M \
        seq_len=32768 context_tokens=30720 negatives=bm25 negatives_top_k=500 workers=8
    python data_prep/prepare_hotpotqa.py --demo --out runs/data/hotpot-demo tokenizer=runs/data/synthetic/tokenizer

Questions and corpus may be .jsonl, .json (array), .parquet or a `datasets` save_to_disk directory; a corpus of
raw documents is cut into ~100-word passages with corpus_split_words=100. ``--demo`` writes tiny invented
HotpotQA-format files under --out/inputs first. Reruns skip finished shards.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lcrecipes.data.config import data_config
from lcrecipes.data.fixtures import write_hotpotqa_fixture
from lcrecipes.data.prepare import prepare


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="hotpotqa", choices=["hotpotqa", "2wiki"])
    p.add_argument("--strategy", default="doc_ids")
    p.add_argument("--out", required=True)
    p.add_argument("--demo", action="store_true", help="invent tiny input files under OUT/inputs")
    p.add_argument("overrides", nargs="*", help="DataConfig key=value")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fields = {"source": args.source, "out_dir": args.out}
    if args.demo:
        paths = write_hotpotqa_fixture(
            Path(args.out) / "inputs", n_questions=40, n_corpus=400, twowiki=args.source == "2wiki"
        )
        fields.update(train_path=str(paths["train_path"]), corpus_path=str(paths["corpus_path"]), num_eval=8)
    print(prepare(data_config(args.overrides, **fields), args.strategy))


if __name__ == "__main__":
    main()
