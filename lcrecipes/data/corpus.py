"""Passage corpora: loading (``id, title, text``), splitting raw documents into ~N-word passages, and an on-disk
random-access ``PassageStore`` so a corpus is never held in memory.

Store layout (one directory, written atomically): ``passages.bin`` (UTF-8 JSON ``[pid, title, text]`` per row,
concatenated), ``offsets.npy`` (int64 [n + 1] byte offsets), ``meta.json`` (count, fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from lcrecipes.data.errors import BadRecords, DataError, Location, require
from lcrecipes.data.example import Passage
from lcrecipes.data.hashing import atomic_dir, sha256_json

log = logging.getLogger(__name__)


def split_words(text: str, words: int) -> list[str]:
    """Cut ``text`` into windows of ``words`` words; a tail shorter than a quarter window joins the previous."""
    toks = text.split()
    pieces = [toks[i : i + words] for i in range(0, len(toks), words)]
    if len(pieces) > 1 and len(pieces[-1]) < max(1, words // 4):
        tail = pieces.pop()
        pieces[-1] = pieces[-1] + tail
    return [" ".join(p) for p in pieces]


def parse_passage(rec: dict, loc: Location) -> Passage:
    """A corpus row (``id`` str/int, optional ``title``, ``text``) as a Passage, else a DataError."""
    pid = require(rec, "id", (str, int), loc)
    title = rec.get("title") or ""
    if not isinstance(title, str):
        raise DataError(loc, "wrong_type", f"expected str, got {type(title).__name__}", field="title")
    text = require(rec, "text", str, loc)
    return Passage(pid=str(pid), title=title.strip(), text=text.strip())


def corpus_passages(
    records: Iterable[tuple[Location, dict]], bad: BadRecords, split: int = 0
) -> Iterator[tuple[Location, Passage]]:
    """Passages of a corpus; ``split > 0`` cuts each row's text into ~``split``-word passages ``id#k``."""
    for loc, rec in records:
        try:
            p = parse_passage(rec, loc)
        except DataError as e:
            bad.handle(e)
            continue
        if split <= 0:
            yield loc, p
            continue
        for k, piece in enumerate(split_words(p.text, split)):
            yield loc, Passage(pid=f"{p.pid}#{k}", title=p.title, text=piece)


def _id_hash(pid: str) -> int:
    return int.from_bytes(hashlib.blake2b(pid.encode(), digest_size=8).digest(), "little")


class PassageStore:
    """Random access to passages on disk: ``store[i] -> Passage``, ``len(store)``; pickles by path."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.meta = json.loads((self.root / "meta.json").read_text())
        self.offsets = np.load(self.root / "offsets.npy", mmap_mode="r")
        self._mm: mmap.mmap | None = None

    def __getstate__(self):
        return {"root": self.root}

    def __setstate__(self, state):
        self.__init__(state["root"])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def _bytes(self) -> mmap.mmap | bytes:
        if self._mm is None:
            with open(self.root / "passages.bin", "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if len(self) else b""
        return self._mm

    def __getitem__(self, i: int) -> Passage:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        pid, title, text = json.loads(self._bytes()[a:b])
        return Passage(pid=pid, title=title, text=text)

    def __iter__(self) -> Iterator[Passage]:
        return (self[i] for i in range(len(self)))

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @classmethod
    def build(
        cls, root: str | Path, passages: Iterable[tuple[Location, Passage]], fingerprint: str, bad: BadRecords
    ) -> PassageStore:
        """Write a store (duplicate ids: the second occurrence is bad, ``duplicate_id``)."""
        with atomic_dir(root) as tmp:
            offsets, hashes, lines = array("q", [0]), array("Q"), array("q")
            first = Location("<empty>", 0)
            with open(tmp / "passages.bin", "wb") as f:
                for loc, p in passages:
                    first = loc if not lines else first
                    offsets.append(offsets[-1] + f.write(_encode(p)))
                    hashes.append(_id_hash(p.pid))
                    lines.append(loc.line)
            offsets = np.frombuffer(offsets, dtype=np.int64)
            keep = _first_occurrences(np.frombuffer(hashes, dtype=np.uint64), first, lines, bad)
            if keep is not None:
                offsets = _compact(tmp / "passages.bin", offsets, keep)
            np.save(tmp / "offsets.npy", offsets)
            meta = {"count": len(offsets) - 1, "fingerprint": fingerprint, "skipped": bad.as_dict()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        return cls(root)


def _encode(p: Passage) -> bytes:
    return json.dumps([p.pid, p.title, p.text], ensure_ascii=False).encode("utf-8")


def _first_occurrences(hashes: np.ndarray, first: Location, lines: array, bad: BadRecords) -> np.ndarray | None:
    """Rows to keep (None: all) after raising/counting every repeated id (a 64-bit hash of the id)."""
    order = np.argsort(hashes, kind="stable")
    dup = np.zeros(len(hashes), dtype=bool)
    dup[order[1:]] = hashes[order[1:]] == hashes[order[:-1]]
    for row in np.flatnonzero(dup):
        loc = Location(first.file, lines[row], first.unit)
        bad.handle(DataError(loc, "duplicate_id", "id already used by an earlier passage", field="id"))
    return None if not dup.any() else ~dup


def _compact(path: Path, offsets: np.ndarray, keep: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(keep)
    packed = path.with_suffix(".compact")
    with open(path, "rb") as src, open(packed, "wb") as f:
        data = mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ)
        for r in rows:
            f.write(data[offsets[r] : offsets[r + 1]])
        data.close()
    packed.replace(path)
    sizes = offsets[rows + 1] - offsets[rows]
    return np.concatenate([[0], np.cumsum(sizes)])


def open_corpus(
    corpus_path: str | Path, cache_dir: str | Path, split: int, bad: BadRecords, input_hash: str
) -> PassageStore:
    """The store for ``corpus_path`` in ``cache_dir`` (built once per content hash, split and bad-record mode)."""
    from lcrecipes.data.readers import read_records

    fp = sha256_json({"input": input_hash, "split": split, "on_bad": bad.mode})
    root = Path(cache_dir) / f"corpus-{fp[:16]}"
    if (root / "meta.json").exists():
        store = PassageStore(root)
        bad.counts.update(store.meta.get("skipped", {}))
        return store
    log.info("building passage store %s from %s", root, corpus_path)
    store_bad = BadRecords(bad.mode)
    store = PassageStore.build(
        root, corpus_passages(read_records(corpus_path, store_bad), store_bad, split), fp, store_bad
    )
    bad.merge(store_bad)
    return store


def write_store(root: str | Path, passages: Iterable[Passage], fingerprint: str) -> PassageStore:
    """A store from passages built in code (the synthetic world), reused if the fingerprint matches."""
    root = Path(root)
    if (root / "meta.json").exists() and PassageStore(root).fingerprint == fingerprint:
        return PassageStore(root)
    loc = Location("<generated>", 0)
    return PassageStore.build(root, ((loc, p) for p in passages), fingerprint, BadRecords("error"))
