"""TOVA (Oren et al. 2024, arXiv 2401.06104): scores entries by the last prompt token's attention (mean over
heads).
"""

from __future__ import annotations

from kvpress import TOVAPress

from lcrecipes.eval.compression.press import PressMethod


class TOVA(PressMethod):
    """kvpress `TOVAPress` (drops entries: frees memory). Kwargs: the press's fields."""

    name = "tova"
    press_cls = TOVAPress
