"""Entry points: ``prepare`` (source -> packed shards for train and eval), ``build_examples`` and
``write_examples_jsonl`` (raw RetrievalExamples, e.g. the synthetic in-domain / out-of-domain test sets).

``prepare(cfg, "doc_ids", "runs/data/x")`` writes ``x/train/`` and ``x/eval/`` (see shards.py), ``x/tokenizer/``
when the tokenizer is trained, and ``x/cache/`` (passage stores, retrieval indexes). A rerun skips finished
splits and shards; a changed config, strategy, tokenizer or input file changes the fingerprint and rebuilds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

from tqdm.auto import tqdm

from lcrecipes.data.config import DataConfig
from lcrecipes.data.errors import BadRecords
from lcrecipes.data.example import RetrievalExample
from lcrecipes.data.hashing import sha256_json, write_json_atomic
from lcrecipes.data.packing import Packer
from lcrecipes.data.pipeline import Workers, WorkerSpec, _examples, chunks, with_rows, write_shard
from lcrecipes.data.shards import FORMAT_VERSION, read_shard_record
from lcrecipes.data.sources import Source, get_source
from lcrecipes.data.tokenizer import load_tokenizer, tokenizer_hash, train_tokenizer

log = logging.getLogger(__name__)
SPLITS = ("train", "eval")
# Fields that do not change the bytes written (paths are replaced by content hashes).
_NOT_FINGERPRINTED = ("workers", "out_dir", "cache_dir", "tokenizer", "train_path", "eval_path", "corpus_path")


class _Run:
    """The shared state of one prepare/build call: config, source, tokenizer, store, miner (lazy)."""

    def __init__(self, cfg: DataConfig, out_dir: Path, strategy: str | None, tokenizer: str | None = None):
        problems = cfg.validate()
        if problems:
            raise ValueError("invalid data config:\n" + "\n".join(f"  data.{k}: {m}" for k, m in problems))
        self.cfg, self.out, self.strategy = cfg, Path(out_dir), strategy
        self.cache = Path(cfg.cache_dir) if cfg.cache_dir else self.out / "cache"
        self.source: Source = get_source(cfg.source)(cfg, self.cache)
        self.corpus_bad = BadRecords(cfg.on_bad_record)
        self.store = self.source.corpus(self.corpus_bad) if cfg.kind == "qa" else None
        self.tokenizer_path = tokenizer or resolve_tokenizer(cfg, self.source, self.out)
        self.tok = load_tokenizer(self.tokenizer_path)
        self._miner = None

    @property
    def miner(self):
        if self._miner is None and self.store is not None and self.cfg.negatives_top_k > 0:
            from lcrecipes.data.negatives import get_miner

            self._miner = get_miner(self.cfg.negatives, self.store, self.cache)
        return self._miner

    def spec(self) -> WorkerSpec:
        c = self.cfg
        return WorkerSpec(
            str(self.tokenizer_path),
            self.strategy,
            c.kind,
            str(self.store.root) if self.store else None,
            c.context_tokens,
            c.seed,
            c.fuzzy_threshold,
            self.source.promote_near_duplicates,
            c.fill_random,
        )

    def output_config(self) -> dict:
        """The config fields that decide the output bytes."""
        return {k: v for k, v in asdict(self.cfg).items() if k not in _NOT_FINGERPRINTED}

    def fingerprint(self, split: str) -> str:
        return sha256_json(
            {
                "format": FORMAT_VERSION,
                "split": split,
                "config": self.output_config(),
                "inputs": self.source.input_hashes(),
                "tokenizer": tokenizer_hash(self.tok),
                "strategy": self.strategy if self.cfg.kind == "qa" else None,
            }
        )

    def items(self, split: str, bad: BadRecords) -> Iterator:
        if self.cfg.kind == "lm":
            return self.source.lm_documents(split, bad)
        return self.source.records(split, bad)


def resolve_tokenizer(cfg: DataConfig, source: Source, out_dir: Path) -> str:
    """The tokenizer spec to load; ``"train"`` trains (or reuses) ``out_dir/tokenizer``."""
    if cfg.tokenizer != "train":
        return cfg.tokenizer
    texts = list(tokenizer_corpus(source))
    fp = sha256_json({"texts": sha256_json(texts), "vocab": cfg.tokenizer_vocab_size})
    return str(train_tokenizer(texts, out_dir / "tokenizer", cfg.tokenizer_vocab_size, fp))


def tokenizer_corpus(source: Source, per_strategy: int = 24) -> Iterator[str]:
    """The synthetic corpus plus every strategy's prompts and targets on a few small examples, so instructions
    and output keywords get their own pieces."""
    from lcrecipes.data.builder import assemble_example
    from lcrecipes.strategies import STRATEGIES, get_strategy

    yield from source.gen.tokenizer_texts()
    recs = list(source.gen.records("train", per_strategy, "mixed"))
    for name in sorted(STRATEGIES):
        s = get_strategy(name)
        for rec in recs:
            ex = assemble_example(rec, rec.gold + rec.distractors, [])
            yield s.prompt(ex)
            yield s.build_target(ex)


def prepare(
    data_cfg: DataConfig, strategy_name: str | None, out_dir: str | Path | None = None, splits: Iterable[str] = SPLITS
) -> Path:
    """Write packed shards for ``splits`` under ``out_dir`` (default ``data_cfg.out_dir``); returns out_dir.

    ``strategy_name`` picks the training target (``kind=qa``); it is ignored for ``kind=lm``."""
    out = Path(out_dir or data_cfg.out_dir)
    if data_cfg.kind == "qa" and not strategy_name:
        raise ValueError("kind 'qa' needs a strategy name (the training target)")
    run = _Run(data_cfg, out, strategy_name if data_cfg.kind == "qa" else None)
    for split in splits:
        _prepare_split(run, split)
    return out


def _prepare_split(run: _Run, split: str) -> None:
    cfg, split_dir = run.cfg, run.out / split
    fp = run.fingerprint(split)
    manifest_path = split_dir / "manifest.json"
    if manifest_path.exists() and json.loads(manifest_path.read_text()).get("fingerprint") == fp:
        log.info("%s: up to date, skipping", split_dir)
        return
    split_dir.mkdir(parents=True, exist_ok=True)
    bad = BadRecords(cfg.on_bad_record)
    pad = run.tok.pad_token_id if run.tok.pad_token_id is not None else run.tok.eos_token_id
    records, totals = [], Counter()
    total = run.source.limit(split) if run.source.limit(split) < 1 << 62 else None
    bar = tqdm(run.items(split, bad), total=total, desc=f"prepare {split}", unit="ex", disable=None)
    with Workers(run.spec(), cfg.workers) as workers:
        for k, items in enumerate(chunks(bar, cfg.examples_per_shard)):
            shard_dir = split_dir / f"shard_{k:05d}"
            rec = read_shard_record(shard_dir)
            if rec is None or rec.get("fingerprint") != fp:
                if cfg.kind == "qa":
                    items = with_rows(items, run.miner, cfg.negatives_top_k)
                packer = Packer(cfg.seq_len, pad, cfg.open_bins, cfg.overlong)
                rec = write_shard(shard_dir, items, workers, packer, cfg.seq_len, {"fingerprint": fp, "index": k})
            records.append(
                {"name": shard_dir.name, "n_sequences": rec["counts"].get("sequences", 0), "sha256": rec["sha256"]}
            )
            totals.update(rec["counts"])
            totals.update({f"stats.{s}": v for s, v in rec["stats"].items()})
    _remove_stale(split_dir, len(records))
    _write_manifest(run, split, fp, records, totals, bad)


def _remove_stale(split_dir: Path, n_shards: int) -> None:
    """Shards beyond the current count, and temporary dirs left by an interrupted run."""
    for d in [*split_dir.glob("shard_*"), *split_dir.glob(".shard_*.tmp-*")]:
        if d.is_dir() and (d.name.startswith(".") or int(d.name.split("_")[1]) >= n_shards):
            shutil.rmtree(d)


def _write_manifest(run: _Run, split: str, fp: str, shards: list, totals: Counter, bad: BadRecords) -> None:
    skipped = Counter(bad.counts) + Counter(run.corpus_bad.counts)
    stats = {k.split(".", 1)[1]: v for k, v in sorted(totals.items()) if k.startswith("stats.")}
    tok = run.tok
    write_json_atomic(
        run.out / split / "manifest.json",
        {
            "format_version": FORMAT_VERSION,
            "split": split,
            "kind": run.cfg.kind,
            "strategy": run.strategy,
            "fingerprint": fp,
            "seq_len": run.cfg.seq_len,
            "context_tokens": run.cfg.context_tokens,
            "tokenizer": {
                "path": _relative(run.tokenizer_path, run.out),
                "sha256": tokenizer_hash(tok),
                "vocab_size": len(tok),
                "bos_token_id": tok.bos_token_id,
                "eos_token_id": tok.eos_token_id,
                "pad_token_id": tok.pad_token_id,
            },
            "config": run.output_config(),
            "inputs": run.source.input_hashes(),
            "counts": {k: v for k, v in sorted(totals.items()) if "." not in k},
            "skipped": dict(sorted(skipped.items())),
            "stats": stats,
            "shards": shards,
        },
    )


def _relative(path: str, out: Path) -> str:
    """``path`` relative to ``out`` when inside it (manifests do not depend on where out_dir lives), else absolute
    (a path relative to the working directory would be read back relative to the split dir)."""
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return str(Path(path).resolve())


def manifest_tokenizer(split_dir: str | Path) -> str:
    """The tokenizer a split was prepared with (for training/eval: ``load_tokenizer`` / AutoTokenizer)."""
    split_dir = Path(split_dir)
    path = json.loads((split_dir / "manifest.json").read_text())["tokenizer"]["path"]
    return str(split_dir.parent / path) if not Path(path).is_absolute() else path


def build_examples(
    data_cfg: DataConfig,
    split: str = "eval",
    domain: str | None = None,
    context_tokens: int | None = None,
    num: int | None = None,
    tokenizer: str | None = None,
) -> Iterator[RetrievalExample]:
    """Yield built RetrievalExamples of ``split`` at ``context_tokens`` (default: the config's), ``num`` of them
    (default: num_train / num_eval), from ``domain`` (synthetic only: in_domain | out_of_domain | mixed)."""
    cfg = replace(data_cfg, context_tokens=context_tokens or data_cfg.context_tokens, kind="qa")
    if num is not None:
        cfg = replace(cfg, **{"num_train" if split == "train" else "num_eval": num})
    run = _Run(cfg, Path(cfg.out_dir), None, tokenizer)
    bad = BadRecords(cfg.on_bad_record)
    recs = run.source.records(split, bad, domain) if domain else run.source.records(split, bad)
    with Workers(run.spec(), cfg.workers) as workers:
        for block in chunks(recs, 64):
            for ex, _ in workers.map(_examples, with_rows(block, run.miner, cfg.negatives_top_k)):
                yield ex


def write_examples_jsonl(examples: Iterable[RetrievalExample], path: str | Path) -> int:
    """Write ``RetrievalExample.to_json()`` lines atomically; returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    with open(tmp, "w") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_json(), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n
