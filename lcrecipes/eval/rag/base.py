"""The retriever plugin: rank passages against a question. One file per retriever, registered by name."""

from __future__ import annotations

from typing import Any, ClassVar


class Retriever:
    """Base class: fill :meth:`scores`. ``rank`` orders passages best first (ties keep their original order)."""

    name: ClassVar[str]

    def __init__(self, **options: Any) -> None:
        self.options = options

    def scores(self, query: str, texts: list[str]) -> list[float]:
        """One relevance score per text (higher is better)."""
        raise NotImplementedError

    def rank(self, query: str, texts: list[str]) -> list[int]:
        """Indices of ``texts``, most relevant first."""
        s = self.scores(query, texts)
        return sorted(range(len(texts)), key=lambda i: (-s[i], i))


RETRIEVERS: dict[str, type[Retriever]] = {}


def register(cls: type[Retriever]) -> type[Retriever]:
    if cls.name in RETRIEVERS:
        raise ValueError(f"retriever {cls.name!r} registered twice")
    RETRIEVERS[cls.name] = cls
    return cls


def get_retriever(name: str, **options: Any) -> Retriever:
    if name not in RETRIEVERS:
        raise KeyError(f"unknown retriever {name!r}; known: {sorted(RETRIEVERS)}")
    return RETRIEVERS[name](**options)
