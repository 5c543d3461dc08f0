"""Expected Attention (kvpress): scores entries by the attention future queries are expected to pay, from the
mean/covariance of the prompt's queries, times value norms.
"""

from __future__ import annotations

from kvpress import ExpectedAttentionPress

from lcrecipes.eval.compression.press import PressMethod


class ExpectedAttention(PressMethod):
    """kvpress `ExpectedAttentionPress` (drops entries: frees memory). Kwargs: the press's fields."""

    name = "expected_attention"
    press_cls = ExpectedAttentionPress
