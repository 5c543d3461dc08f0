"""BM25 (bm25s, English stopwords); needs no model."""

from __future__ import annotations

import logging

import bm25s

from lcrecipes.eval.rag.base import Retriever, register

logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets its logger to DEBUG on import (one line per index)


@register
class BM25Retriever(Retriever):
    name = "bm25"

    def scores(self, query: str, texts: list[str]) -> list[float]:
        corpus = bm25s.tokenize(texts, stopwords="en", show_progress=False)
        index = bm25s.BM25()
        index.index(corpus, show_progress=False)
        q = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
        return index.get_scores(q).tolist()
