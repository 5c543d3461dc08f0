"""RAG baseline: chunking, retrievers (BM25, offline dense MiniLM), rank-order contexts cut to a token budget."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import lcrecipes.eval.rag as rag_pkg
from lcrecipes.data.example import Passage, RetrievalExample
from lcrecipes.eval.context import n_tokens
from lcrecipes.eval.rag import RETRIEVERS, Retriever, build_rag_example, chunk_passages, get_retriever
from lcrecipes.eval.rag.chunking import passage_text
from tests.unit.test_eval_context import tiny_tokenizer

DOCS = [
    Passage("a", "Rivers", "The river Lima flows through the mountain city of Oslo year after year."),
    Passage("b", "", "Acme Corp reported net income and revenue for the year."),
    Passage("c", "Long", " ".join(["alpha beta gamma delta company filing profit"] * 12)),
    Passage("d", "Cities", "Paris and Rome are cities; Rome was born of a river."),
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(chat=False)


def test_registry_complete():
    modules = {m.name for m in pkgutil.iter_modules(rag_pkg.__path__)} - {"base", "chunking"}
    assert modules == {importlib.import_module(c.__module__).__name__.rsplit(".", 1)[1] for c in RETRIEVERS.values()}
    assert all(issubclass(c, Retriever) and c.name == k for k, c in RETRIEVERS.items())
    with pytest.raises(KeyError, match="unknown retriever"):
        get_retriever("splade")


def test_chunks_respect_the_size_keep_text_and_sources(tok):
    size = 24
    chunks = chunk_passages(DOCS, tok, size)
    assert all(c.n_tokens <= size for c in chunks)
    assert all(n_tokens(tok, c.text) <= size + 1 for c in chunks)
    long_pieces = [c for c in chunks if c.sources == (3,)]
    assert len(long_pieces) > 1 and "".join(c.text for c in long_pieces).replace(" ", "") == passage_text(
        DOCS[2]).replace(" ", "")  # fmt: skip
    assert all(c.text in passage_text(DOCS[2]) for c in long_pieces)
    covered = sorted({s for c in chunks for s in c.sources})
    assert covered == [1, 2, 3, 4]


def test_bm25_ranks_the_matching_passage_first():
    texts = [passage_text(p) for p in DOCS]
    assert get_retriever("bm25").rank("Which company reported net income?", texts)[0] == 1
    assert get_retriever("bm25").rank("Which river flows through Oslo?", texts)[0] == 0


def test_dense_minilm_offline():
    texts = ["A cat is a small domesticated feline.", "Stock prices fell sharply on Monday.", "Paris is in France."]
    assert get_retriever("dense").rank("What kind of animal is a kitten?", texts)[0] == 0


class Fixed(Retriever):
    name = "fixed_test"

    def scores(self, query, texts):
        return [float(len(texts) - i) if i % 2 else 0.0 for i in range(len(texts))]  # odd chunks, in order


def test_budget_cut_keeps_rank_order_and_maps_gold(tok):
    ex = RetrievalExample("q", "Which city?", ["Oslo"], DOCS, gold=[4], choices=None)
    full, info = build_rag_example(ex, tok, Fixed(), budget=10_000, chunk_tokens=24)
    chunks = chunk_passages(DOCS, tok, 24)
    n = len(chunks)
    order = [j for j in range(n) if j % 2] + [j for j in range(n) if not j % 2]
    assert Fixed().rank("q", [c.text for c in chunks]) == order and info["n_chunks"] == n
    assert [d.text for d in full.docs] == [chunks[j].text for j in order]
    assert info["n_kept_tokens"] == sum(c.n_tokens for c in chunks)
    assert full.gold == [k for k, j in enumerate(order, start=1) if 4 in chunks[j].sources]
    cut, info = build_rag_example(ex, tok, Fixed(), budget=30, chunk_tokens=24)
    assert info["n_kept_tokens"] == 30 and info["n_kept_chunks"] == 2
    assert cut.docs[0].text == chunks[1].text and chunks[3].text.startswith(cut.docs[1].text)
    assert info["gold_ranks"] == [k for k, j in enumerate(order, start=1) if 4 in chunks[j].sources]
