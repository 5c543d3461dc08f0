"""Hard negatives (BM25, dense MiniLM offline), near-duplicate promotion, and the example builder's token budget
measured with the real tokenizer."""

from __future__ import annotations

import pytest

from lcrecipes.data.builder import ExampleBuilder, TokenCounter
from lcrecipes.data.config import SyntheticConfig
from lcrecipes.data.corpus import write_store
from lcrecipes.data.errors import Location
from lcrecipes.data.example import Passage, render_context
from lcrecipes.data.fixtures import corpus_records, hotpotqa_records
from lcrecipes.data.fuzzy import DISTINCT, DUPLICATE, NEAR_DUPLICATE, GoldMatcher, similarity
from lcrecipes.data.negatives import MINERS, get_miner
from lcrecipes.data.sources.hotpotqa import parse_hotpotqa
from lcrecipes.data.synthetic.generator import SyntheticGenerator
from lcrecipes.data.tokenizer import load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    gen = SyntheticGenerator(SyntheticConfig(), 0)
    return load_tokenizer(train_tokenizer(gen.tokenizer_texts(), tmp_path_factory.mktemp("tok"), 800, "t"))


@pytest.fixture(scope="module")
def hotpot(tmp_path_factory):
    """Question q0 (HotpotQA format), and a store: 120 filler passages + near-duplicate + copy of q0's gold."""
    qs = hotpotqa_records(3)
    rows = corpus_records(120, qs, words=40)
    store = write_store(
        tmp_path_factory.mktemp("store"), [Passage(r["id"], r["title"], r["text"]) for r in rows], "fixture"
    )
    return parse_hotpotqa(qs[0], Location("q.json", 1)), store


def test_registry_complete():
    assert set(MINERS) == {"bm25", "dense"}
    with pytest.raises(KeyError, match="unknown negatives miner"):
        get_miner("splade", None, ".")


def test_fuzzy_classes():
    gold = "Org 0 is a guild of makers. It was founded by Person 0."
    m = GoldMatcher([gold], 0.6)
    assert m.classify("org 0 is a guild of makers!  It was founded by person 0") == DUPLICATE
    assert m.classify("Org 0 is a guild of craft makers. It was founded by Person 0.") == NEAR_DUPLICATE
    assert m.classify("The river stone market opened in winter.") == DISTINCT
    assert GoldMatcher([gold], 1.0).classify(gold.replace("makers", "craft makers")) == DISTINCT
    assert 0.6 < similarity(gold, gold.replace("makers", "craft makers")) < 1.0


def test_bm25_ranks_lexical_match_first(hotpot, tmp_path):
    rec, store = hotpot
    miner = get_miner("bm25", store, tmp_path)
    rows = miner.search([rec.question, "zzzz qqqq"], 5)
    assert store[rows[0][0]].pid == "near0" and rows[1] == []
    again = get_miner("bm25", store, tmp_path)  # loads the cached index
    assert again.search([rec.question], 5) == rows[:1]


def test_dense_minilm_offline(hotpot, tmp_path):
    rec, store = hotpot
    miner = get_miner("dense", store, tmp_path)
    rows = miner.search(["Who grew up in Ashby?", "guild of makers founded by Person 0"], 3)
    assert store[rows[0][0]].pid == "copy0" and store[rows[1][0]].pid == "near0"
    assert miner.emb.shape == (len(store), 384)


def _build(tok, store, rec, rows, budget, seed=0, promote=True):
    b = ExampleBuilder(store, TokenCounter(tok), budget, seed, 0.6, promote, fill_random=True)
    return b.build(rec, rows)


def test_builder_promotes_near_duplicate_and_drops_copy(tok, hotpot):
    rec, store = hotpot
    rows = [i for i in range(len(store)) if store[i].pid in ("near0", "copy0")] + [0, 1, 2]
    ex, stats = _build(tok, store, rec, rows, 2000)
    titles = [ex.docs[i - 1].title for i in ex.gold]
    assert titles == ["Org 0", "Person 0", "Org 0 (guild)"]  # gold in evidence order, then promoted
    assert "copy0" not in {p.pid for p in ex.docs}
    assert stats["promoted"] == 1 and stats["dropped_duplicates"] == 1
    for i, sents in ex.supporting.items():
        assert i in ex.gold[:2] and all(s in ex.docs[i - 1].text for s in sents)
    ex2, _ = _build(tok, store, rec, rows, 2000, promote=False)
    assert [ex2.docs[i - 1].title for i in ex2.gold] == ["Org 0", "Person 0"]


@pytest.mark.parametrize("budget", [600, 3000])
def test_builder_fills_budget_exactly_and_deterministically(tok, hotpot, budget):
    rec, store = hotpot
    ex, stats = _build(tok, store, rec, list(range(10)), budget)
    n = len(tok.encode(render_context(ex.docs), add_special_tokens=False))
    biggest = max(len(tok.encode(p.text, add_special_tokens=False)) for p in store)
    assert budget - biggest - 16 <= n <= budget and stats["context_tokens"] == n
    assert len({p.pid for p in ex.docs}) == len(ex.docs)
    again, _ = _build(tok, store, rec, list(range(10)), budget)
    assert again.to_json() == ex.to_json()
    other, _ = _build(tok, store, rec, list(range(10)), budget, seed=1)
    assert [p.pid for p in other.docs] != [p.pid for p in ex.docs]
