"""A source turns its inputs into ``QARecord`` questions (and plain documents for ``kind=lm``).

One file per source, a small base class and a string-keyed registry (``SOURCES``); ``get_source(name)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from lcrecipes.data.config import DataConfig
from lcrecipes.data.corpus import PassageStore
from lcrecipes.data.errors import BadRecords
from lcrecipes.data.record import QARecord

SOURCES: dict[str, type[Source]] = {}


class Source:
    """Base class. Fill ``records`` (and ``lm_documents`` for kind=lm); ``corpus`` is the negatives corpus."""

    name: ClassVar[str] = ""
    # Whether retrieved negatives that nearly duplicate a gold passage are promoted to gold. A closed world
    # whose every passage is a known negative (synthetic) turns this off: its templated passages look alike.
    promote_near_duplicates: ClassVar[bool] = True

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.name:
            SOURCES[cls.name] = cls

    def __init__(self, cfg: DataConfig, cache_dir: Path):
        self.cfg, self.cache_dir = cfg, Path(cache_dir)

    def records(self, split: str, bad: BadRecords) -> Iterator[QARecord]:
        """``split`` is ``train`` or ``eval``; yields at most ``num_train`` / ``num_eval`` records."""
        raise NotImplementedError

    def corpus(self, bad: BadRecords) -> PassageStore | None:
        """The passage store hard negatives are retrieved from (None: record distractors only)."""
        return None

    def lm_documents(self, split: str, bad: BadRecords) -> Iterator[tuple[str, str]]:
        """``(doc_id, text)`` plain documents for ``kind=lm``."""
        raise NotImplementedError(f"source {self.name!r} has no plain documents")

    def input_hashes(self) -> dict[str, str]:
        """Content hashes of every input file (they enter the shard fingerprint)."""
        return {}

    def limit(self, split: str) -> int:
        n = self.cfg.num_train if split == "train" else self.cfg.num_eval
        return n if n >= 0 else 1 << 62


def get_source(name: str) -> type[Source]:
    import lcrecipes.data.sources  # noqa: F401  (registers every source)

    if name not in SOURCES:
        raise KeyError(f"unknown data source {name!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]
