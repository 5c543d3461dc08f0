"""Build a ``RetrievalExample`` from a ``QARecord``: gold + hard negatives, filled to a token budget, shuffled.

Candidates are considered in this order: the record's own distractors, the retrieved corpus rows (rank order),
then (``fill_random``) seeded random corpus rows. A candidate that repeats a gold passage's words exactly is
dropped; one whose word-level similarity with a gold passage reaches ``fuzzy_threshold`` is promoted to gold
(when the source allows promotion). Candidates are added while their rendered ``[DOC i]`` block still fits in
``context_tokens`` (real tokenizer); the rendered context is then measured exactly and trimmed if needed.
Everything random is seeded by ``(seed, qid)``, so a record always gives the same example.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from collections.abc import Iterator

from lcrecipes.data.corpus import PassageStore
from lcrecipes.data.example import DOC_TAG, Passage, RetrievalExample, render_context, render_doc
from lcrecipes.data.fuzzy import DUPLICATE, NEAR_DUPLICATE, GoldMatcher
from lcrecipes.data.hashing import stable_seed
from lcrecipes.data.record import GOLD_REF_RE, QARecord

BLOCK = 64  # candidates fetched and token-counted per batch
MAX_MISSES = 64  # random-fill draws in a row that do not fit before giving up


class TokenCounter:
    """Token counts with the real tokenizer (no special tokens added); passage costs cached by pid (LRU)."""

    def __init__(self, tokenizer, cache_size: int = 200_000):
        self.tok = tokenizer
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.cache: OrderedDict[str, int] = OrderedDict()
        self.cache_size = cache_size
        self._tags: dict[int, int] = {}
        self.sep = self.count(["\n\n"])[0]

    def count(self, texts: list[str]) -> list[int]:
        if self.backend is not None:
            return [len(e.ids) for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]]

    def tag(self, i: int) -> int:
        """Tokens of the bare ``[DOC i]`` tag (counted 512 ids at a time)."""
        if i not in self._tags:
            ids = range(i - i % 512, i - i % 512 + 512)
            self._tags.update(zip(ids, self.count([render_doc(j, Passage("", "", "")) for j in ids])))
        return self._tags[i]

    def bodies(self, passages: list[Passage]) -> list[int]:
        """Tokens of each passage's ``[DOC i]`` block minus its tag."""
        todo = [p for p in passages if p.pid not in self.cache]
        for p, n in zip(todo, self.count([render_doc(1, p) for p in todo])):
            self.cache[p.pid] = n - self.tag(1)
        out = []
        for p in passages:
            self.cache.move_to_end(p.pid)
            out.append(self.cache[p.pid])
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return out


class ExampleBuilder:
    def __init__(
        self,
        store: PassageStore | None,
        counter: TokenCounter,
        context_tokens: int,
        seed: int,
        fuzzy_threshold: float,
        promote: bool,
        fill_random: bool,
    ):
        self.store, self.counter, self.budget, self.seed = store, counter, context_tokens, seed
        self.threshold = fuzzy_threshold if promote else 1.0
        self.fill_random = fill_random

    def build(self, rec: QARecord, rows: list[int]) -> tuple[RetrievalExample, Counter]:
        """The example for ``rec`` with retrieved store ``rows`` (rank order) as candidate negatives."""
        rng = random.Random(stable_seed(self.seed, "docs", rec.qid))
        sel = _Selection(rec, GoldMatcher([p.text for p in rec.gold], self.threshold), self.counter, self.budget)
        for block in self._candidates(rec, rows, rng):
            if not sel.offer(block):
                break
        else:
            sel.stats["exhausted_candidates"] += 1
        docs = sel.gold + sel.promoted + sel.negatives
        rng.shuffle(docs)
        docs = self._trim(docs, sel)
        return assemble_example(rec, docs, sel.promoted), sel.stats

    def _candidates(self, rec: QARecord, rows: list[int], rng: random.Random) -> Iterator[list[Passage]]:
        for a in range(0, len(rec.distractors), BLOCK):
            yield rec.distractors[a : a + BLOCK]
        for a in range(0, len(rows), BLOCK):
            yield [self.store[r] for r in rows[a : a + BLOCK]]
        if self.fill_random and self.store is not None and len(self.store):
            n = len(self.store)
            for _ in range(min(4 * n, 1 << 20) // BLOCK + 1):
                yield [self.store[rng.randrange(n)] for _ in range(BLOCK)]

    def _trim(self, docs: list[Passage], sel: _Selection) -> list[Passage]:
        """Drop the last-added negatives until the exactly measured context fits the budget."""
        measured = self.counter.count([render_context(docs)])[0]
        while measured > self.budget and sel.negatives:
            docs.remove(sel.negatives.pop())
            sel.stats.update(trimmed=1, negatives=-1)
            measured = self.counter.count([render_context(docs)])[0]
        sel.stats["context_tokens"] += measured
        return docs


def assemble_example(rec: QARecord, docs: list[Passage], promoted: list[Passage]) -> RetrievalExample:
    """The example showing ``docs`` in order; gold ids: the record's gold (evidence order), then ``promoted``."""
    pos = {p.pid: i for i, p in enumerate(docs, start=1)}
    gold = [pos[p.pid] for p in rec.gold] + [pos[p.pid] for p in promoted]
    supporting = {pos[p.pid]: list(rec.supporting[p.pid]) for p in rec.gold if rec.supporting.get(p.pid)}
    reasoning = rec.reasoning and GOLD_REF_RE.sub(lambda m: DOC_TAG.format(i=gold[int(m.group(1))]), rec.reasoning)
    return RetrievalExample(
        qid=rec.qid,
        question=rec.question,
        answers=list(rec.answers),
        docs=docs,
        gold=gold,
        supporting=supporting,
        choices=rec.choices,
        reasoning=reasoning,
        domain=rec.domain,
    )


class _Selection:
    """The docs chosen so far for one record and their running token cost."""

    def __init__(self, rec: QARecord, matcher: GoldMatcher, counter: TokenCounter, budget: int):
        self.gold, self.promoted, self.negatives = list(rec.gold), [], []
        self.matcher, self.counter, self.budget = matcher, counter, budget
        self.used = {p.pid for p in rec.gold}
        self.texts = {p.text for p in rec.gold}  # a corpus may hold one text under several ids
        self.stats: Counter = Counter(examples=1)
        self.cost = self._block_cost(sum(counter.bodies(self.gold)), len(self.gold))
        self.misses = 0

    def _block_cost(self, bodies: int, n: int) -> int:
        return bodies + sum(self.counter.tag(i) for i in range(1, n + 1)) + self.counter.sep * max(n - 1, 0)

    def offer(self, block: list[Passage]) -> bool:
        """Consider ``block`` in order; False once the budget is full or random fill keeps missing."""
        block = [p for p in dict.fromkeys(block) if p.pid not in self.used]
        for p, body in zip(block, self.counter.bodies(block)):
            if p.pid in self.used:
                continue
            n = len(self.gold) + len(self.promoted) + len(self.negatives) + 1
            extra = body + self.counter.tag(n) + self.counter.sep
            if self.cost + extra > self.budget:
                self.misses += 1
                if self.misses >= MAX_MISSES or self.budget - self.cost < self.counter.sep + self.counter.tag(n):
                    return False
                continue
            self.misses = 0
            self.used.add(p.pid)
            kind = DUPLICATE if p.text in self.texts else self.matcher.classify(p.text)
            if kind == DUPLICATE:
                self.stats["dropped_duplicates"] += 1
                continue
            self.texts.add(p.text)
            (self.promoted if kind == NEAR_DUPLICATE else self.negatives).append(p)
            self.stats["promoted" if kind == NEAR_DUPLICATE else "negatives"] += 1
            self.cost += extra
        return True
