"""SnapKV (Li et al. 2024, arXiv 2404.14469): scores context entries by the attention the last `window_size`
prompt tokens pay them (pooled); query-aware when the question sits in that window.
"""

from __future__ import annotations

from kvpress import SnapKVPress

from lcrecipes.eval.compression.press import PressMethod


class SnapKV(PressMethod):
    """kvpress `SnapKVPress` (drops entries: frees memory). Kwargs: the press's fields."""

    name = "snapkv"
    press_cls = SnapKVPress
