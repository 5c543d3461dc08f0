"""A learnable synthetic packed dataset for smoke tests and benchmarks (no tokenizer, no downloads).

    write_synthetic_shards("runs/synth", seq_len=64, n_train=64, n_eval=8, vocab_size=64)

Each document is an arithmetic progression of token ids (random start and stride, modulo the vocabulary, id 0
reserved for padding) of random length; the last ``target_frac`` of each document is the loss target. Documents
are packed by the data package's ``Packer`` and written with its ``ShardWriter``, so ``ShardDataset`` reads them
like the output of ``lcr prepare``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lcrecipes.data.encode import Encoded
from lcrecipes.data.hashing import write_json_atomic
from lcrecipes.data.packing import Packer
from lcrecipes.data.shards import FORMAT_VERSION, ShardWriter


def _document(rng: np.random.Generator, i: int, length: int, vocab_size: int, target_frac: float) -> Encoded:
    start, stride = int(rng.integers(1, vocab_size)), int(rng.integers(1, 4))
    ids = (start + stride * np.arange(length)) % (vocab_size - 1) + 1
    mask = np.zeros(length, dtype=np.uint8)
    mask[length - max(1, int(round(length * target_frac))):] = 1
    return Encoded(f"doc{i}", ids.astype(np.uint32), mask)


def _write_split(split_dir: Path, n_seq: int, seq_len: int, vocab_size: int, doc_len: tuple[int, int],
                 target_frac: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    packer, out, i = Packer(seq_len, pad_id=0, open_bins=2), [], 0
    while len(out) < n_seq:
        length = int(rng.integers(doc_len[0], doc_len[1] + 1))
        out += list(packer.add(_document(rng, i, length, vocab_size, target_frac)))
        i += 1
    with ShardWriter(split_dir / "shard_00000", seq_len) as w:
        for seq in out[:n_seq]:
            w.write(seq)
        rec = w.finish({"index": 0, "stats": {}})
    write_json_atomic(split_dir / "manifest.json", {
        "format_version": FORMAT_VERSION, "split": split_dir.name, "kind": "synthetic", "seq_len": seq_len,
        "counts": rec["counts"], "shards": [{"name": "shard_00000", "n_sequences": n_seq, "sha256": rec["sha256"]}],
    })


def write_synthetic_shards(out_dir: str | Path, seq_len: int, n_train: int, n_eval: int, vocab_size: int,
                           doc_len: tuple[int, int] | None = None, target_frac: float = 0.5,
                           seed: int = 0) -> Path:
    """Write ``train/`` and ``eval/`` splits of ``seq_len``-token sequences under ``out_dir``; returns it.

    ``doc_len``: (min, max) document length in tokens (default ``seq_len // 8`` to ``seq_len // 2``).
    Rewrites nothing that exists (delete the directory to regenerate).
    """
    out = Path(out_dir)
    doc_len = doc_len or (max(2, seq_len // 8), max(2, seq_len // 2))
    for split, n, s in (("train", n_train, seed), ("eval", n_eval, seed + 1)):
        if not (out / split / "manifest.json").is_file():
            _write_split(out / split, n, seq_len, vocab_size, doc_len, target_frac, s)
    return out
