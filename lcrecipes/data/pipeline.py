"""The per-shard work: retrieve negatives, build examples, tokenize (in worker processes), pack, write.

Workers each hold one ``_Worker`` (tokenizer, strategy, passage store, builder), created from a picklable
``WorkerSpec``; results come back in input order (``imap``), so the output does not depend on ``workers``.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lcrecipes.data.builder import ExampleBuilder, TokenCounter
from lcrecipes.data.corpus import PassageStore
from lcrecipes.data.encode import Encoded, Encoder
from lcrecipes.data.example import RetrievalExample
from lcrecipes.data.packing import Packer
from lcrecipes.data.shards import ShardWriter

BATCH = 8  # examples per worker task (one tokenizer call)


@dataclass(frozen=True)
class WorkerSpec:
    tokenizer: str
    strategy: str | None
    kind: str
    store: str | None
    context_tokens: int
    seed: int
    fuzzy_threshold: float
    promote: bool
    fill_random: bool


class _Worker:
    def __init__(self, spec: WorkerSpec):
        from lcrecipes.data.tokenizer import load_tokenizer

        tok = load_tokenizer(spec.tokenizer)
        strategy = None
        if spec.strategy:
            from lcrecipes.strategies import get_strategy

            strategy = get_strategy(spec.strategy)
        self.encoder = Encoder(tok, strategy)
        store = PassageStore(spec.store) if spec.store else None
        self.builder = ExampleBuilder(
            store,
            TokenCounter(tok),
            spec.context_tokens,
            spec.seed,
            spec.fuzzy_threshold,
            spec.promote,
            spec.fill_random,
        )
        self.kind = spec.kind

    def examples(self, batch: list) -> list[tuple[RetrievalExample, Counter]]:
        return [self.builder.build(rec, rows) for rec, rows in batch]

    def process(self, batch: list) -> list[tuple[Encoded, Counter]]:
        if self.kind == "lm":
            return [(e, Counter(documents_in=1)) for e in self.encoder.encode_documents(batch)]
        built = self.examples(batch)
        encoded = self.encoder.encode_examples([ex for ex, _ in built])
        return [(e, st) for e, (_, st) in zip(encoded, built)]


_WORKER: _Worker | None = None


def _init(spec: WorkerSpec) -> None:
    global _WORKER
    _WORKER = _Worker(spec)


def _process(batch: list) -> list:
    return _WORKER.process(batch)


def _examples(batch: list) -> list:
    return _WORKER.examples(batch)


class Workers:
    """``map(batches)`` in order, in-process (``n == 1``) or in ``n`` forked worker processes."""

    def __init__(self, spec: WorkerSpec, n: int):
        self.spec, self.n, self.pool = spec, n, None

    def __enter__(self) -> Workers:
        if self.n > 1:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            self.pool = mp.get_context(method).Pool(self.n, initializer=_init, initargs=(self.spec,))
        else:
            _init(self.spec)
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def map(self, fn, items: list, batch: int = BATCH) -> Iterator:
        batches = [items[a : a + batch] for a in range(0, len(items), batch)]
        it = self.pool.imap(fn, batches) if self.pool is not None else map(fn, batches)
        for out in it:
            yield from out


def with_rows(records: list, miner, k: int) -> list[tuple]:
    """Pair each record with its retrieved store rows (k + gold count, so excluding gold still leaves k)."""
    if miner is None or k <= 0:
        return [(r, []) for r in records]
    extra = max((len(r.gold) for r in records), default=0)
    return list(zip(records, miner.search([r.question for r in records], k + extra)))


def write_shard(shard_dir: Path, items: list, workers: Workers, packer: Packer, seq_len: int, meta: dict) -> dict:
    """Encode ``items`` (``(record, rows)`` or ``(doc_id, text)``), pack them and write one shard."""
    stats: Counter = Counter()
    with ShardWriter(shard_dir, seq_len) as w:
        for enc, st in workers.map(_process, items):
            stats.update(st)
            for seq in packer.add(enc):
                w.write(seq)
        for seq in packer.flush():
            w.write(seq)
        return w.finish({**meta, "items": len(items), "stats": dict(sorted(stats.items()))})


def chunks(items: Iterable, size: int) -> Iterator[list]:
    buf = []
    for x in items:
        buf.append(x)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf
