"""Synthetic question sets and plain documents drawn from one ``World`` (see world.py, questions.py).

Question instances (type, key) are split into train and eval by a hash of the instance, so the eval questions
of any domain are never trained on. The question types take turns; each walks a seeded shuffle of its
instances, cycled if more are asked for than exist (a repeat gets its own distractors and a qid suffix).
Deterministic in ``(world_seed, seed)``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

from lcrecipes.data.config import SyntheticConfig
from lcrecipes.data.hashing import stable_seed
from lcrecipes.data.record import QARecord
from lcrecipes.data.synthetic.questions import QUESTION_TYPES
from lcrecipes.data.synthetic.world import World

# Question types whose instances depend on attribute values (checked again in a fresh-facts variant).
_CONDITIONAL = ("compare_revenue",)
DOMAINS = {"in_domain": ("in_domain",), "out_of_domain": ("out_of_domain",), "mixed": ("in_domain", "out_of_domain")}


class SyntheticGenerator:
    def __init__(self, cfg: SyntheticConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.world = World(cfg.entities, cfg.companies, cfg.years, cfg.world_seed, cfg.repeat_attributes)

    def _pools(self, split: str, domain: str) -> list[tuple[str, list]]:
        """Per question type of ``domain``: its ``split`` instances in a seeded order."""
        pools = []
        for name in self.cfg.questions:
            qt = QUESTION_TYPES[name]
            if qt.domain not in DOMAINS[domain]:
                continue
            keys = [k for k in qt.keys(self.world) if self._is_eval(name, k) == (split == "eval")]
            random.Random(stable_seed(self.seed, split, name, "order")).shuffle(keys)
            if keys:
                pools.append((name, keys))
        return pools

    def _is_eval(self, name: str, key) -> bool:
        digest = hashlib.blake2b(repr((self.cfg.world_seed, name, key)).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") % 10_000 < self.cfg.eval_fraction * 10_000

    def records(self, split: str, n: int, domain: str | None = None) -> Iterator[QARecord]:
        """``n`` question records of ``split`` (train | eval) from ``domain`` (default: the config's), the
        question types taking turns."""
        domain = domain or self.cfg.domain
        pools = self._pools(split, domain)
        if not pools and n:
            raise ValueError(f"synthetic: no {split} questions for domain {domain!r} and types {self.cfg.questions}")
        for i in range(n):
            name, keys = pools[i % len(pools)]
            j = i // len(pools)
            key, repeat = keys[j % len(keys)], j // len(keys)
            rng = random.Random(stable_seed(self.seed, split, name, key, repeat))
            rec = QUESTION_TYPES[name].build(self._world_for(name, key, rng), key, rng)
            if repeat:
                rec.qid = f"{rec.qid}#{repeat}"
            yield rec

    def _world_for(self, name: str, key, rng: random.Random) -> World:
        """The world a question is asked of: the fixed one, or (``fresh_facts``) a variant drawn for this question
        in which its instance still exists (a revenue comparison needs two different revenues)."""
        if not self.cfg.fresh_facts:
            return self.world
        while True:
            world = self.world.variant(rng.getrandbits(63))
            if name not in _CONDITIONAL or key in QUESTION_TYPES[name].keys(world):
                return world

    def lm_documents(self, split: str, n: int) -> Iterator[tuple[str, str]]:
        """``n`` plain documents of ``lm_doc_passages`` passages each, as ``(doc_id, text)``."""
        for i in range(n):
            rng = random.Random(stable_seed(self.seed, "lm", split, i))
            world = self.world.variant(rng.getrandbits(63)) if self.cfg.fresh_facts else self.world
            yield (
                f"lm:{split}:{i}",
                world.lm_document(rng, self.cfg.lm_doc_passages, self.cfg.lm_doc_recall, self.cfg.lm_doc_questions),
            )

    def tokenizer_texts(self) -> Iterator[str]:
        """Text the tokenizer is trained on: every passage, plus questions and answers of the configured types."""
        for p in self.world.passages():
            yield p.title
            yield p.text
        for split in ("train", "eval"):
            for rec in self.records(split, 400, "mixed"):
                yield rec.question
                yield from rec.answers
                yield from rec.choices or []
                yield rec.reasoning or ""
