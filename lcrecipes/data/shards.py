"""Shard format, writer and random-access reader.

A split directory (``train/``, ``eval/``) holds ``manifest.json`` and shards ``shard_00000/`` ... Each shard:

* ``tokens.u32``      uint32 [n_seq * seq_len] token ids (memory-mapped on read)
* ``mask.u8``         uint8  [n_seq * seq_len] loss mask (1 = target token)
* ``cu_seqlens.i64``  int64  document boundaries of every sequence, concatenated
* ``offsets.i64``     int64  [n_seq + 1]: sequence j's boundaries are ``cu_seqlens[offsets[j]:offsets[j + 1]]``
* ``n_docs.i32``      int32  [n_seq] real documents per sequence (a trailing padding segment is not one)
* ``documents.jsonl`` one line per document: ``{"id", "piece", "seq", "start", "len"}``
* ``shard.json``      counts, skipped records per reason, build stats, fingerprint, sha256 of every file

A shard is written in a temporary directory and renamed when complete; the manifest is written last. Opening a
split checks every array file's size (it follows from ``n_sequences``, ``seq_len`` and ``offsets[-1]``), so a
truncated file is named at once; ``verify=True`` also recomputes every sha256.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from pathlib import Path

import numpy as np

from lcrecipes.data.hashing import atomic_dir, sha256_file
from lcrecipes.data.packing import Packed

FORMAT_VERSION = 1
FILES = {
    "tokens.u32": np.uint32,
    "mask.u8": np.uint8,
    "cu_seqlens.i64": np.int64,
    "offsets.i64": np.int64,
    "n_docs.i32": np.int32,
}


class ShardWriter:
    """``with ShardWriter(dir, seq_len) as w: w.write(packed); ...; w.finish(meta)``; nothing is visible at
    ``dir`` unless ``finish`` ran and the block exited cleanly."""

    def __init__(self, final_dir: str | Path, seq_len: int):
        self.final_dir, self.seq_len = Path(final_dir), seq_len
        self.counts: Counter = Counter()
        self._offsets, self._n_docs = [0], []

    def __enter__(self) -> ShardWriter:
        self._ctx = atomic_dir(self.final_dir)
        self.tmp = self._ctx.__enter__()
        self._f = {name: open(self.tmp / name, "wb") for name in ("tokens.u32", "mask.u8", "cu_seqlens.i64")}
        self._docs = open(self.tmp / "documents.jsonl", "w")
        self._finished = False
        return self

    def write(self, seq: Packed) -> None:
        assert len(seq.ids) == self.seq_len == len(seq.mask) and seq.cu_seqlens[-1] == self.seq_len
        j = self.counts["sequences"]
        self._f["tokens.u32"].write(seq.ids.astype(np.uint32, copy=False).tobytes())
        self._f["mask.u8"].write(seq.mask.astype(np.uint8, copy=False).tobytes())
        self._f["cu_seqlens.i64"].write(seq.cu_seqlens.astype(np.int64, copy=False).tobytes())
        self._offsets.append(self._offsets[-1] + len(seq.cu_seqlens))
        self._n_docs.append(seq.n_docs)
        for (doc_id, piece), a, b in zip(seq.docs, seq.cu_seqlens[:-1], seq.cu_seqlens[1:]):
            self._docs.write(
                json.dumps({"id": doc_id, "piece": piece, "seq": j, "start": int(a), "len": int(b - a)}) + "\n"
            )
        used = int(seq.cu_seqlens[seq.n_docs])
        self.counts.update(
            sequences=1,
            documents=seq.n_docs,
            tokens=used,
            pad_tokens=self.seq_len - used,
            target_tokens=int(seq.mask.sum()),
        )

    def finish(self, meta: dict) -> dict:
        """Close the files and write ``shard.json`` (``meta`` + counts + sha256); returns that record."""
        for f in (*self._f.values(), self._docs):
            f.close()
        np.asarray(self._offsets, dtype=np.int64).tofile(self.tmp / "offsets.i64")
        np.asarray(self._n_docs, dtype=np.int32).tofile(self.tmp / "n_docs.i32")
        names = [*FILES, "documents.jsonl"]
        record = {
            **meta,
            "counts": dict(sorted(self.counts.items())),
            "sha256": {n: sha256_file(self.tmp / n) for n in names},
        }
        (self.tmp / "shard.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        self._finished = True
        return record

    def __exit__(self, typ, exc, tb):
        for f in (*self._f.values(), self._docs):
            f.close()
        if typ is None and not self._finished:
            err = RuntimeError(f"{self.final_dir}: ShardWriter left without finish()")
            self._ctx.__exit__(RuntimeError, err, None)
            raise err
        return self._ctx.__exit__(typ, exc, tb)


def read_shard_record(shard_dir: str | Path) -> dict | None:
    """``shard.json`` of a finished shard, or None."""
    p = Path(shard_dir) / "shard.json"
    return json.loads(p.read_text()) if p.exists() else None


class ShardError(ValueError):
    """A shard file is missing, truncated or differs from the manifest; the message names the file."""


class _Shard:
    def __init__(self, root: Path, seq_len: int, n_seq: int):
        self.root, self.seq_len, self.n_seq = root, seq_len, n_seq
        self._mm: dict[str, np.ndarray] | None = None

    def _items(self, name: str) -> int:
        """Number of items ``name`` must hold (``cu_seqlens.i64``: ``offsets[-1]``, read from its file)."""
        if name in ("tokens.u32", "mask.u8"):
            return self.n_seq * self.seq_len
        if name == "offsets.i64":
            return self.n_seq + 1
        if name == "n_docs.i32":
            return self.n_seq
        with open(self.root / "offsets.i64", "rb") as f:
            f.seek(-8, 2)
            return int(np.frombuffer(f.read(8), dtype=np.int64)[0])

    def check_sizes(self) -> None:
        """Every array file has the size the counts imply; raises ShardError naming the first that does not."""
        for name in sorted(FILES, key=lambda n: n == "cu_seqlens.i64"):  # offsets first: it sizes cu_seqlens
            path, dtype = self.root / name, FILES[name]
            if not path.is_file():
                raise ShardError(f"{path}: missing; rerun `lcr prepare`")
            want = self._items(name) * np.dtype(dtype).itemsize
            if path.stat().st_size != want:
                raise ShardError(
                    f"{path}: {path.stat().st_size} bytes, expected {want} ({self.n_seq} sequences "
                    f"of {self.seq_len} tokens); the file is truncated or damaged, rerun `lcr prepare`"
                )

    def arrays(self) -> dict[str, np.ndarray]:
        if self._mm is None:
            self._mm = {
                n: np.memmap(self.root / n, dtype=t, mode="r")
                if (self.root / n).stat().st_size
                else np.zeros(0, dtype=t)
                for n, t in FILES.items()
            }
        return self._mm


class ShardDataset:
    """Random access over a split directory: ``ds[i]`` -> dict of torch tensors

    ``input_ids`` int64 [seq_len], ``loss_mask`` bool [seq_len], ``cu_seqlens`` int32 [n_segments + 1]
    (documents, then padding if any, so ``cu_seqlens[-1] == seq_len``), ``position_ids`` int64 [seq_len]
    (restarting at 0 in every segment), ``n_docs`` int (real documents). Pickles by path (DataLoader workers).
    """

    def __init__(self, root: str | Path, verify: bool = False):
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no manifest; run `lcr prepare` (or the split is unfinished)")
        self.manifest = json.loads(path.read_text())
        self.seq_len = int(self.manifest["seq_len"])
        self.shards = [_Shard(self.root / s["name"], self.seq_len, s["n_sequences"]) for s in self.manifest["shards"]]
        self._starts = np.cumsum([0] + [s.n_seq for s in self.shards]).tolist()
        for shard in self.shards:
            shard.check_sizes()
        if verify:
            self.verify()

    def __getstate__(self):
        return {"root": self.root}

    def __setstate__(self, state):
        self.__init__(state["root"])

    def __len__(self) -> int:
        return self._starts[-1]

    def verify(self) -> None:
        """Recompute every file's sha256 against the manifest; raises naming the first mismatch."""
        for s in self.manifest["shards"]:
            for name, digest in s["sha256"].items():
                if sha256_file(self.root / s["name"] / name) != digest:
                    raise ShardError(f"{self.root / s['name'] / name}: sha256 differs from the manifest")

    def numpy_item(self, i: int) -> dict:
        """Like ``ds[i]`` but numpy arrays, no torch."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {len(self)} sequences in {self.root}")
        i %= len(self)
        k = bisect.bisect_right(self._starts, i) - 1
        j, L, a = i - self._starts[k], self.seq_len, self.shards[k].arrays()
        cu = np.asarray(a["cu_seqlens.i64"][a["offsets.i64"][j] : a["offsets.i64"][j + 1]])
        lens = np.diff(cu)
        pos = np.arange(L, dtype=np.int64) - np.repeat(cu[:-1], lens)
        n_docs = int(a["n_docs.i32"][j])
        return {
            "input_ids": np.asarray(a["tokens.u32"][j * L : (j + 1) * L], dtype=np.int64),
            "loss_mask": np.asarray(a["mask.u8"][j * L : (j + 1) * L], dtype=bool),
            "cu_seqlens": cu.astype(np.int32),
            "position_ids": pos,
            "n_docs": n_docs,
        }

    def __getitem__(self, i: int) -> dict:
        import torch

        item = self.numpy_item(i)
        return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in item.items()}
