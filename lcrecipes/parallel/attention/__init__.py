"""Context-parallel attention implementations behind one registry; see ``base`` for the call and shapes."""

from lcrecipes.parallel.attention import allgather, ring, sdpa, ulysses  # noqa: F401  (registers them)
from lcrecipes.parallel.attention.base import CPAttention
from lcrecipes.parallel.attention.registry import (
    ATTENTIONS,
    available_attentions,
    cp_attention,
    get_attention,
    register_attention,
)

__all__ = [
    "ATTENTIONS",
    "CPAttention",
    "available_attentions",
    "cp_attention",
    "get_attention",
    "register_attention",
]
