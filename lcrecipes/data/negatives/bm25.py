"""BM25 negatives with ``bm25s`` (English stopwords, lower-cased words); the index is cached on disk."""

from __future__ import annotations

import logging

from lcrecipes.data.hashing import atomic_dir
from lcrecipes.data.negatives.base import NegativeMiner, passage_text

log = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG


class BM25Miner(NegativeMiner):
    name = "bm25"

    def __init__(self, store, cache_dir):
        super().__init__(store, cache_dir)
        import bm25s

        self._bm25s = bm25s
        root = self.index_dir()
        if not (root / "vocab.tokenizer.json").exists():
            self._build(root)
        self.retriever = bm25s.BM25.load(str(root))
        self.tokenizer = bm25s.tokenization.Tokenizer(stopwords="en")
        self.tokenizer.load_vocab(str(root))

    def _build(self, root) -> None:
        log.info("indexing %d passages with BM25 into %s", len(self.store), root)
        tokenizer = self._bm25s.tokenization.Tokenizer(stopwords="en")
        texts = (passage_text(self.store, i) for i in range(len(self.store)))
        corpus = tokenizer.tokenize(texts, length=len(self.store), return_as="tuple", show_progress=False)
        retriever = self._bm25s.BM25()
        retriever.index(corpus, show_progress=False)
        with atomic_dir(root) as tmp:
            retriever.save(str(tmp))
            tokenizer.save_vocab(str(tmp))

    def search(self, queries: list[str], k: int) -> list[list[int]]:
        k = min(k, len(self.store))
        if not queries or k <= 0:
            return [[] for _ in queries]
        ids = self.tokenizer.tokenize(queries, update_vocab=False, return_as="ids", show_progress=False)
        docs, scores = self.retriever.retrieve(ids, k=k, show_progress=False, n_threads=1)
        return [[int(d) for d, s in zip(row, srow) if s > 0] for row, srow in zip(docs, scores)]
