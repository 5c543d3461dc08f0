"""Adapter from kvpress score-based presses to `CompressionMethod`.

The press is used through its hook API: `with press(model): model(prompt)` compresses the cache during the
prefill forward (kvpress `BasePress.forward_hook`). Decoding is our own greedy loop on the DynamicCache.

* query_agnostic: the press itself runs on the context, with a `compression_ratio` chosen so kvpress keeps
  exactly `n_keep` entries per layer (same press, same result as kvpress's own pipeline).
* query_aware: context + question are prefilled under `QuestionKeepingPress`, a `BasePress` that scores all
  entries with the wrapped press's `score()` (so the scores see the question) but always keeps the question's
  own entries and keeps the `n_keep` best-scored context entries.
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import torch
from kvpress import BasePress, ScorerPress
from kvpress.utils import compute_n_kept
from torch import nn
from transformers import PreTrainedModel

from lcrecipes.eval.compression.base import CompressionMethod


def press_ratio(k_len: int, n_keep: int) -> float:
    """kvpress `compression_ratio` that keeps exactly `n_keep` of `k_len` entries (kvpress keeps
    int(k_len * (1 - ratio)); aiming at n_keep + 0.5 makes the truncation land on n_keep)."""
    if not 1 <= n_keep <= k_len:
        raise ValueError(f"n_keep must be in [1, {k_len}], got {n_keep}")
    ratio = max(0.0, 1.0 - (n_keep + 0.5) / k_len)
    assert ratio == 0.0 or compute_n_kept(k_len, ratio) == n_keep, (k_len, n_keep, ratio)
    return ratio


@dataclasses.dataclass
class QuestionKeepingPress(BasePress):
    """Keeps the last `n_protected` entries (the question) and the `n_keep` best context entries by the
    wrapped press's scores, computed over context + question. Entries stay in position order."""

    press: ScorerPress
    n_keep: int
    n_protected: int

    def post_init_from_model(self, model: PreTrainedModel) -> None:
        self.press.post_init_from_model(model)

    def compress(
        self,
        module: nn.Module,
        hidden_states: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        attentions: torch.Tensor,
        kwargs: dict,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """keys, values `[batch, kv_heads, context + question, head_dim]` -> n_keep + n_protected entries."""
        k_len, n_total = keys.shape[2], self.n_keep + self.n_protected
        if n_total >= k_len:
            return keys, values
        scores = self.press.score(module, hidden_states, keys, values, attentions, kwargs)  # [b, kv_heads, k_len]
        scores = scores.float()
        scores[..., k_len - self.n_protected :] = float("inf")
        index = scores.topk(n_total, dim=-1).indices.sort(dim=-1).values
        index = index.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1])
        return keys.gather(2, index).contiguous(), values.gather(2, index).contiguous()


class PressMethod(CompressionMethod):
    """A kvpress `ScorerPress` as a compression method; subclasses set `name` and `press_cls`.
    Constructor kwargs are the press's own fields (e.g. `window_size` for SnapKV), never `compression_ratio`
    (that comes from the budget)."""

    press_cls: ClassVar[type[ScorerPress]]
    attn_implementation = "sdpa"
    frees_memory = True

    def __init__(self, **press_params: Any):
        allowed = {f.name for f in dataclasses.fields(self.press_cls)} - {"compression_ratio"}
        unknown = sorted(set(press_params) - allowed)
        if unknown:
            raise ValueError(
                f"method {self.name!r}: unknown parameter(s) {unknown}; "
                f"{self.press_cls.__name__} accepts {sorted(allowed)}"
            )
        self.press_params = press_params

    def make_press(self, compression_ratio: float) -> ScorerPress:
        """The kvpress press configured with this method's parameters."""
        return self.press_cls(compression_ratio=compression_ratio, **self.press_params)

    def prefill_hooks(
        self, model: PreTrainedModel, n_context: int, n_keep: int, n_protected: int
    ) -> AbstractContextManager:
        k_len = n_context + n_protected
        press: BasePress = self.make_press(press_ratio(k_len, n_keep + n_protected))
        if n_protected:
            press = QuestionKeepingPress(press=press, n_keep=n_keep, n_protected=n_protected)
        return press(model)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, press={self.press_cls.__name__}, {self.press_params})"
