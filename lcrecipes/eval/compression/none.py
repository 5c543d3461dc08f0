"""No compression: the reference every method is compared with (full cache, full attention)."""

from __future__ import annotations

from lcrecipes.eval.compression.base import CompressionMethod


class NoCompression(CompressionMethod):
    """Keeps the whole KV cache and attends to all of it; the budget is ignored (kept bytes == full)."""

    name = "none"
    attn_implementation = "sdpa"
    frees_memory = False
