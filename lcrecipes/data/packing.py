"""First-fit packing of documents into fixed-length sequences; no document ever crosses a sequence boundary.

A packed sequence is ``seq_len`` tokens: its documents back to back, then padding (``pad_id``, loss mask 0).
``cu_seqlens`` holds the document boundaries ``[0, len_1, len_1 + len_2, ..., seq_len]``; padding, when present,
is the last segment (so attention kernels can take ``cu_seqlens`` as is; ``n_docs`` counts real documents).
A document longer than ``seq_len`` is an error naming it (``overlong="error"``) or is split into ``seq_len``
pieces, each packed as its own document (``overlong="split"``); it is never silently cut.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from lcrecipes.data.encode import Encoded


class OverlongError(ValueError):
    pass


@dataclass
class Packed:
    """One sequence: ``ids`` uint32 [seq_len], ``mask`` uint8 [seq_len], ``cu_seqlens`` int64 [n_segments + 1],
    ``docs`` the (doc_id, piece) of each real document in order, ``n_docs`` the number of real documents."""

    ids: np.ndarray
    mask: np.ndarray
    cu_seqlens: np.ndarray
    docs: list[tuple[str, int]]

    @property
    def n_docs(self) -> int:
        return len(self.docs)


@dataclass(eq=False)
class _Bin:
    parts: list[Encoded] = field(default_factory=list)
    pieces: list[int] = field(default_factory=list)
    used: int = 0


class Packer:
    """``add(doc)`` yields the sequences it completes; ``flush()`` yields the rest. Deterministic.

    Up to ``open_bins`` sequences are kept open; a document goes to the first one it fits in. When none fits and
    all are open, the fullest is closed (ties: the oldest); a sequence filled exactly is closed at once."""

    def __init__(self, seq_len: int, pad_id: int, open_bins: int = 4, overlong: str = "error"):
        self.seq_len, self.pad_id, self.open_bins, self.overlong = seq_len, pad_id, open_bins, overlong
        self.bins: list[_Bin] = []

    def add(self, doc: Encoded) -> Iterator[Packed]:
        for piece, part in enumerate(self._pieces(doc)):
            yield from self._place(part, piece)

    def _pieces(self, doc: Encoded) -> list[Encoded]:
        n, L = len(doc), self.seq_len
        if n == 0:
            return []
        if n <= L:
            return [doc]
        if self.overlong != "split":
            raise OverlongError(
                f"document {doc.doc_id!r} has {n} tokens > seq_len={L}; lower context_tokens, "
                "raise seq_len or set overlong=split"
            )
        return [Encoded(doc.doc_id, doc.ids[a : a + L], doc.mask[a : a + L]) for a in range(0, n, L)]

    def _place(self, part: Encoded, piece: int) -> Iterator[Packed]:
        target = next((b for b in self.bins if b.used + len(part) <= self.seq_len), None)
        if target is None:
            if len(self.bins) >= self.open_bins:
                fullest = max(range(len(self.bins)), key=lambda k: (self.bins[k].used, -k))
                yield self._close(self.bins.pop(fullest))
            target = _Bin()
            self.bins.append(target)
        self._put(target, part, piece)
        if target.used == self.seq_len:
            self.bins.remove(target)
            yield self._close(target)

    def _put(self, b: _Bin, part: Encoded, piece: int) -> None:
        b.parts.append(part)
        b.pieces.append(piece)
        b.used += len(part)

    def flush(self) -> Iterator[Packed]:
        while self.bins:
            yield self._close(self.bins.pop(0))

    def _close(self, b: _Bin) -> Packed:
        pad = self.seq_len - b.used
        ids = np.concatenate([p.ids for p in b.parts] + [np.full(pad, self.pad_id, dtype=np.uint32)])
        mask = np.concatenate([p.mask for p in b.parts] + [np.zeros(pad, dtype=np.uint8)])
        lens = [len(p) for p in b.parts] + ([pad] if pad else [])
        cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        return Packed(ids.astype(np.uint32, copy=False), mask, cu, [(p.doc_id, k) for p, k in zip(b.parts, b.pieces)])
