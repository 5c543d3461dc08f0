"""Hard-negative miners (registry ``MINERS``): bm25 (bm25s), dense (sentence-transformers, offline MiniLM)."""

from lcrecipes.data.negatives import bm25, dense  # noqa: F401  (register)
from lcrecipes.data.negatives.base import MINERS, NegativeMiner, get_miner

__all__ = ["MINERS", "NegativeMiner", "get_miner"]
