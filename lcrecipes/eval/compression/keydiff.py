"""KeyDiff (Park et al. 2025, arXiv 2504.15364): keeps the keys least similar (cosine) to the mean key; query-
blind by construction.
"""

from __future__ import annotations

from kvpress import KeyDiffPress

from lcrecipes.eval.compression.press import PressMethod


class KeyDiff(PressMethod):
    """kvpress `KeyDiffPress` (drops entries: frees memory). Kwargs: the press's fields."""

    name = "keydiff"
    press_cls = KeyDiffPress
