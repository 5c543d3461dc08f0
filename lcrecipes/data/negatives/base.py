"""Hard-negative miners: one file each, a small base class, a string-keyed registry (``MINERS``).

A miner indexes a ``PassageStore`` once (cached on disk under ``cache_dir``, keyed by the store's fingerprint)
and returns, per query, store row indices in rank order.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from lcrecipes.data.corpus import PassageStore

MINERS: dict[str, type[NegativeMiner]] = {}


class NegativeMiner:
    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.name:
            MINERS[cls.name] = cls

    def __init__(self, store: PassageStore, cache_dir: str | Path):
        self.store, self.cache_dir = store, Path(cache_dir)

    def search(self, queries: list[str], k: int) -> list[list[int]]:
        """Top-``k`` store rows per query, best first (fewer when the store is smaller)."""
        raise NotImplementedError

    def index_dir(self) -> Path:
        return self.cache_dir / f"{self.name}-{self.store.fingerprint[:16]}"


def passage_text(store: PassageStore, i: int) -> str:
    p = store[i]
    return f"{p.title}\n{p.text}" if p.title else p.text


def get_miner(name: str, store: PassageStore, cache_dir: str | Path) -> NegativeMiner:
    import lcrecipes.data.negatives  # noqa: F401  (registers every miner)

    if name not in MINERS:
        raise KeyError(f"unknown negatives miner {name!r}; known: {', '.join(sorted(MINERS))}")
    return MINERS[name](store, cache_dir)
