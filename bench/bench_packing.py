"""Benchmark of data prep's packing path and its memory at 1M-token sequences (CPU).

    .venv/bin/python bench/bench_packing.py [--examples 16] [--context 32768] [--rss-seq-len 1048576]

Prints:
  1. packing throughput (tokens/s) = chat template + tokenization + loss masks + first-fit packing + shard
     writing of already built examples, vs the same tokenizer's raw batch encoding (``encode_batch_fast``, which
     the packing path calls, in the same batches of 8 examples) of the same prompt and target texts, and the
     ratio (target >= 0.8). One process, one tokenizer thread; fastest of --repeats interleaved runs.
  2. peak RSS of a child process that runs ``prepare`` end to end (corpus store, BM25, example building at
     ``rss-seq-len - 4096`` context tokens, encoding, packing, writing) with ``seq_len = --rss-seq-len``, and the
     RSS of the same child right after imports, so the difference is what the data path itself holds.
The numbers are recorded by hand in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One tokenizer thread for both sides: prepare's parallelism is its worker processes, and a shared machine's
# load makes multi-threaded timings noise. Set TOKENIZERS_PARALLELISM=true to compare multi-threaded.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lcrecipes.data.config import DataConfig, SyntheticConfig  # noqa: E402
from lcrecipes.data.encode import Encoder  # noqa: E402
from lcrecipes.data.packing import Packer  # noqa: E402
from lcrecipes.data.prepare import build_examples  # noqa: E402
from lcrecipes.data.shards import ShardWriter  # noqa: E402
from lcrecipes.data.tokenizer import load_tokenizer  # noqa: E402
from lcrecipes.strategies import get_strategy  # noqa: E402

WORLD = SyntheticConfig(entities=1600, companies=300, domain="mixed")


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _pack(enc: Encoder, exs: list, seq_len: int, pad_id: int, shard_dir: Path) -> None:
    packer = Packer(seq_len, pad_id, open_bins=4)
    with ShardWriter(shard_dir, seq_len) as w:
        for a in range(0, len(exs), 8):  # the pipeline's batch of examples per tokenizer call
            for e in enc.encode_examples(exs[a : a + 8]):
                for seq in packer.add(e):
                    w.write(seq)
        for seq in packer.flush():
            w.write(seq)
        w.finish({})


def throughput(examples: int, context: int, repeats: int, strategy: str, root: Path) -> dict:
    seq_len = context + 2048
    cfg = DataConfig(
        out_dir=str(root / "tp"),
        num_train=examples,
        seq_len=seq_len,
        context_tokens=context,
        synthetic=WORLD,
        negatives_top_k=50,
    )
    exs = list(build_examples(cfg, "train"))
    tok = load_tokenizer(root / "tp" / "tokenizer")
    enc = Encoder(tok, get_strategy(strategy))
    texts = [t for ex in exs for t in enc.chat_texts(ex)[:2]]
    raw, pack, n_tokens = [], [], 0
    for r in range(repeats):  # interleaved, fastest of each, so both see the same machine load
        t0 = time.perf_counter()
        n_tokens = sum(
            len(e.ids)
            for a in range(0, len(texts), 16)
            for e in tok.backend_tokenizer.encode_batch_fast(texts[a : a + 16], add_special_tokens=False)
        )
        raw.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _pack(enc, exs, seq_len, tok.pad_token_id, root / f"shard_{r}")
        pack.append(time.perf_counter() - t0)
    raw_tps, pack_tps = n_tokens / min(raw), n_tokens / min(pack)
    return {
        "examples": len(exs),
        "tokens": n_tokens,
        "raw_tok_s": raw_tps,
        "pack_tok_s": pack_tps,
        "ratio": pack_tps / raw_tps,
    }


def rss_child(seq_len: int, root: Path) -> dict:
    """Runs in a fresh process: prepare 2 examples at ~seq_len tokens from a HotpotQA-format fixture."""
    from lcrecipes.data.fixtures import write_hotpotqa_fixture
    from lcrecipes.data.prepare import prepare
    from lcrecipes.data.tokenizer import train_tokenizer

    base = _maxrss_mb()
    gen_cfg = SyntheticConfig()
    from lcrecipes.data.synthetic.generator import SyntheticGenerator

    tok_dir = train_tokenizer(SyntheticGenerator(gen_cfg, 0).tokenizer_texts(), root / "tok", 2048, "bench")
    n_corpus = seq_len // 300 + 200  # ~380 tokens per fixture passage with this tokenizer
    paths = write_hotpotqa_fixture(root / "in", n_questions=4, n_corpus=n_corpus)
    cfg = DataConfig(
        source="hotpotqa",
        train_path=str(paths["train_path"]),
        corpus_path=str(paths["corpus_path"]),
        tokenizer=str(tok_dir),
        seq_len=seq_len,
        context_tokens=seq_len - 4096,
        num_train=2,
        num_eval=0,
        negatives_top_k=n_corpus,
        open_bins=1,
    )
    t0 = time.perf_counter()
    out = prepare(cfg, "ids_quotes", root / "out", splits=("train",))
    m = json.loads((out / "train" / "manifest.json").read_text())
    return {
        "seq_len": seq_len,
        "tokens": m["counts"]["tokens"],
        "seconds": time.perf_counter() - t0,
        "rss_after_imports_mb": base,
        "peak_rss_mb": _maxrss_mb(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=16)
    p.add_argument("--context", type=int, default=32768)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--strategy", default="ids_quotes")
    p.add_argument("--rss-seq-len", type=int, default=1 << 20)
    p.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.rss_child:
            print(json.dumps(rss_child(args.rss_seq_len, Path(tmp))))
            return
        tp = throughput(args.examples, args.context, args.repeats, args.strategy, Path(tmp))
    print(
        f"packing vs raw batch encoding ({tp['examples']} examples x ~{args.context} context tokens, "
        f"{tp['tokens']} tokens, strategy {args.strategy}):"
    )
    print(f"  raw encode_batch_fast{tp['raw_tok_s']:>12,.0f} tok/s")
    print(f"  packing path           {tp['pack_tok_s']:>12,.0f} tok/s")
    print(f"  ratio                  {tp['ratio']:>12.2f}   (target >= 0.8)")
    child = subprocess.run(
        [sys.executable, __file__, "--rss-child", "--rss-seq-len", str(args.rss_seq_len)],
        capture_output=True,
        text=True,
        check=True,
    )
    rss = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"prepare at seq_len={rss['seq_len']:,} (2 examples, {rss['tokens']:,} tokens, {rss['seconds']:.1f} s):")
    print(f"  RSS after imports {rss['rss_after_imports_mb']:>8.0f} MB")
    extra = rss["peak_rss_mb"] - rss["rss_after_imports_mb"]
    print(f"  peak RSS          {rss['peak_rss_mb']:>8.0f} MB  (+{extra:.0f} MB for the data path)")


if __name__ == "__main__":
    main()
