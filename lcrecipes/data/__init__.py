"""Data preparation: sources -> retrieval examples (hard negatives, [DOC i] tags, token budget) -> packed shards.

The CLI entry point is ``from lcrecipes.data.prepare import prepare``: ``prepare(cfg, strategy, out_dir) -> Path``.
Also exported here (imported lazily so ``lcrecipes.data.example`` stays light):
``DataConfig``, ``build_examples(cfg, split, domain, context_tokens, num)``,
``write_examples_jsonl(examples, path)``, ``ShardDataset(split_dir)``, ``DistributedSampler``,
``load_tokenizer(spec)``, ``manifest_tokenizer(split_dir)``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DataConfig": "lcrecipes.data.config",
    "SyntheticConfig": "lcrecipes.data.config",
    "data_config": "lcrecipes.data.config",
    "build_examples": "lcrecipes.data.prepare",
    "write_examples_jsonl": "lcrecipes.data.prepare",
    "manifest_tokenizer": "lcrecipes.data.prepare",
    "ShardDataset": "lcrecipes.data.shards",
    "DistributedSampler": "lcrecipes.data.sampler",
    "load_tokenizer": "lcrecipes.data.tokenizer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lcrecipes.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
