"""The synthetic source: questions, corpus and plain documents from the generated world (no input files)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict

from lcrecipes.data.corpus import PassageStore, write_store
from lcrecipes.data.errors import BadRecords
from lcrecipes.data.hashing import sha256_json
from lcrecipes.data.record import QARecord
from lcrecipes.data.sources.base import Source
from lcrecipes.data.synthetic.generator import SyntheticGenerator


class Synthetic(Source):
    name = "synthetic"
    # Every passage of the world is a known negative unless it is gold; templated passages look alike.
    promote_near_duplicates = False

    def __init__(self, cfg, cache_dir):
        super().__init__(cfg, cache_dir)
        self.gen = SyntheticGenerator(cfg.synthetic, cfg.seed)

    def records(self, split: str, bad: BadRecords, domain: str | None = None) -> Iterator[QARecord]:
        return self.gen.records(split, self.limit(split), domain)

    def corpus(self, bad: BadRecords) -> PassageStore:
        s = self.cfg.synthetic
        fp = sha256_json({"world": [s.entities, s.companies, s.years, s.world_seed, s.repeat_attributes]})
        return write_store(self.cache_dir / f"synthetic-{fp[:16]}", self.gen.world.passages(), fp)

    def lm_documents(self, split: str, bad: BadRecords) -> Iterator[tuple[str, str]]:
        return self.gen.lm_documents(split, self.limit(split))

    def input_hashes(self) -> dict[str, str]:
        return {"synthetic": sha256_json(asdict(self.cfg.synthetic))}
