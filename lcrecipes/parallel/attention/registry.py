"""String-keyed registry of context-parallel attention implementations (one file per implementation)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from lcrecipes.parallel.attention.base import CPAttention
from lcrecipes.parallel.layout import CPMeta

ATTENTIONS: dict[str, type[CPAttention]] = {}


def register_attention(cls: type[CPAttention]) -> type[CPAttention]:
    """Class decorator: add ``cls`` under ``cls.name``."""
    if not cls.name or cls.name in ATTENTIONS:
        raise ValueError(f"attention class {cls.__name__} needs a unique non-empty name, got {cls.name!r}")
    ATTENTIONS[cls.name] = cls
    return cls


def available_attentions() -> list[str]:
    return sorted(ATTENTIONS)


def get_attention(name: str) -> CPAttention:
    """An instance of the implementation registered as ``name`` ("sdpa", "ring", "ulysses", "allgather")."""
    if name not in ATTENTIONS:
        raise KeyError(f"unknown CP attention {name!r}; registered: {available_attentions()}")
    return ATTENTIONS[name]()


def cp_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    meta: CPMeta,
    group: dist.ProcessGroup | None = None,
    *,
    impl: str = "ring",
    scale: float | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Functional form: ``get_attention(impl)(q, k, v, meta, group, scale=scale, causal=causal)``."""
    return get_attention(impl)(q, k, v, meta, group, scale=scale, causal=causal)
