"""Question sources (registry ``SOURCES``): synthetic, hotpotqa, 2wiki."""

from lcrecipes.data.sources import hotpotqa, synthetic, twowiki  # noqa: F401  (register)
from lcrecipes.data.sources.base import SOURCES, QARecord, Source, get_source

__all__ = ["SOURCES", "QARecord", "Source", "get_source"]
