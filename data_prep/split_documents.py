"""Cut raw documents (``id, title, text``; any reader format) into ~N-word passages as JSONL (``id#k``).

    python data_prep/split_documents.py data/wiki_docs.jsonl data/wiki_passages.jsonl --words 100

Streams both ways; bad records stop with file:line (or are counted with --skip-bad). prepare can also split on
the fly (corpus_split_words=100); this script is for inspecting or sharing the passage corpus.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from lcrecipes.data.corpus import corpus_passages
from lcrecipes.data.errors import BadRecords
from lcrecipes.data.readers import read_records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--words", type=int, default=100)
    p.add_argument("--skip-bad", action="store_true")
    args = p.parse_args()
    bad = BadRecords("skip" if args.skip_bad else "error")
    dst = Path(args.dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    n = 0
    with open(tmp, "w") as f:
        for _, passage in corpus_passages(read_records(args.src, bad), bad, split=args.words):
            f.write(
                json.dumps({"id": passage.pid, "title": passage.title, "text": passage.text}, ensure_ascii=False) + "\n"
            )
            n += 1
    os.replace(tmp, dst)
    print(f"{dst}: {n} passages; skipped {bad.as_dict()}")


if __name__ == "__main__":
    main()
