"""Context parallelism: the zigzag per-document layout, collectives, and portable CP attention.

``layout`` (CPMeta, shard, unshard), ``attention`` (registry: sdpa, ring, ulysses, allgather), ``comm``
(autograd collectives over gloo/NCCL) and ``hf`` (transformers integration; imports transformers lazily).
"""

from lcrecipes.parallel.attention import available_attentions, cp_attention, get_attention
from lcrecipes.parallel.layout import (
    CPMeta,
    TokenInfo,
    make_cp_meta,
    pad_cu_seqlens,
    padded_cu_seqlens,
    shard,
    unshard,
)

__all__ = [
    "CPMeta",
    "TokenInfo",
    "available_attentions",
    "cp_attention",
    "get_attention",
    "make_cp_meta",
    "pad_cu_seqlens",
    "padded_cu_seqlens",
    "shard",
    "unshard",
]
