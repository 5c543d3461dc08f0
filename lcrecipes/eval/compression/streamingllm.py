"""StreamingLLM (Xiao et al. 2023, arXiv 2309.17453): keeps `n_sink` first tokens and the most recent ones;
content-blind.
"""

from __future__ import annotations

from kvpress import StreamingLLMPress

from lcrecipes.eval.compression.press import PressMethod


class StreamingLLM(PressMethod):
    """kvpress `StreamingLLMPress` (drops entries: frees memory). Kwargs: the press's fields."""

    name = "streamingllm"
    press_cls = StreamingLLMPress
