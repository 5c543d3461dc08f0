"""Knorm (Devoto et al. 2024, arXiv 2406.11430): keeps the keys with the smallest L2 norm; query-blind by
construction.
"""

from __future__ import annotations

from kvpress import KnormPress

from lcrecipes.eval.compression.press import PressMethod


class Knorm(PressMethod):
    """kvpress `KnormPress` (drops entries: frees memory). Kwargs: the press's fields."""

    name = "knorm"
    press_cls = KnormPress
