"""Base class of KV-cache compression methods, and the greedy decode loop they all share.

A method fills two small hooks:
  * `prefill_hooks(model, n_context, n_keep, n_protected)`: a context manager active while the prompt is
    prefilled (a kvpress press installs its forward hooks here and compresses the cache in place);
  * `decode_kwargs(n_context, n_keep)`: extra keyword arguments given to every forward after the prefill
    (the top-k retrieval attention reads its budget from them).

Modes (the study runs both where a method supports them):
  * `query_aware`: context + question are prefilled together, so compression sees the question; the question's
    own entries are always kept and only the context part is compressed to the budget.
  * `query_agnostic`: the context alone is prefilled and compressed (as when a cached context is reused for
    many questions); the question is then fed on top of the compressed cache.

Positions stay those of the uncompressed sequence (RoPE position ids are passed explicitly), as kvpress does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import DynamicCache, PreTrainedModel

from lcrecipes.eval.compression.measure import Clock, PeakMemory, bytes_per_position, cache_bytes

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("query_aware", "query_agnostic")


@dataclass
class GenerationResult:
    """One greedy generation under a compression method.

    kv_bytes_full: bytes the context's KV would take uncompressed (all layers, keys + values).
    kv_bytes_kept: bytes of context KV actually held in the cache after prefill (question entries excluded).
    peak_rss_bytes: peak memory during the call (`PeakMemory`: process RSS on CPU, allocator peak on CUDA).
    prefill_s: seconds from the start until the first new token's logits (context, question, compression).
    decode_s: seconds spent generating the remaining tokens.
    """

    text: str
    output_ids: list[int]
    kv_bytes_full: int
    kv_bytes_kept: int
    peak_rss_bytes: int
    prefill_s: float
    decode_s: float
    n_context_tokens: int


def n_kept_tokens(budget: float | int, n_context: int) -> int:
    """Context tokens kept under `budget`: a float in (0, 1] is a fraction (rounded, at least 1), an int >= 1
    a number of tokens (capped at `n_context`)."""
    if isinstance(budget, bool) or not isinstance(budget, int | float):
        raise TypeError(f"budget must be a float fraction or an int token count, got {budget!r}")
    if isinstance(budget, float):
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"a fractional budget must lie in (0, 1], got {budget}")
        return max(1, min(n_context, round(budget * n_context)))
    if budget < 1:
        raise ValueError(f"a token budget must be >= 1, got {budget}")
    return min(budget, n_context)


def expected_kept_fraction(budget: float | int, n_context: int) -> float:
    """The fraction of the context KV a budget asks to keep, (1 - ratio), without rounding."""
    return budget if isinstance(budget, float) else min(1.0, budget / n_context)


@contextmanager
def attention_implementation(model: PreTrainedModel, name: str) -> Iterator[None]:
    """Run the block with `model` using the registered attention implementation `name`, then restore it."""
    previous = model.config._attn_implementation
    if previous != name:
        model.set_attn_implementation(name)
    try:
        yield
    finally:
        if previous != name:
            model.set_attn_implementation(previous)


def _forward(model: PreTrainedModel, cache: DynamicCache, ids: list[int], start: int, **kwargs) -> torch.Tensor:
    """Feed `ids` at positions [start, start + len(ids)) on top of `cache`; return next logits `[vocab]`."""
    device = model.device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    position_ids = torch.arange(start, start + len(ids), device=device).unsqueeze(0)
    out = model(
        input_ids=input_ids,
        past_key_values=cache,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
        **kwargs,
    )
    return out.logits[0, -1]


def _stop_ids(model: PreTrainedModel) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, list | tuple) else {int(eos)}


def greedy_decode(
    model: PreTrainedModel,
    cache: DynamicCache,
    logits: torch.Tensor,
    start: int,
    max_new_tokens: int,
    **kwargs: Any,
) -> list[int]:
    """Greedy tokens from first-step `logits` `[vocab]`; the token at step i sits at position `start + i`.
    Stops after an end-of-sequence token (kept in the output, as `model.generate` does)."""
    stop, out = _stop_ids(model), []
    for step in range(max_new_tokens):
        token = int(logits.argmax())
        out.append(token)
        if token in stop or step == max_new_tokens - 1:
            break
        logits = _forward(model, cache, [token], start + step, **kwargs)
    return out


class CompressionMethod:
    """A KV-cache compression method: declares what it needs and does, and generates greedily under it.

    name: registry key. attn_implementation: the attention implementation the model runs with during
    `generate` (set for the call, restored after). frees_memory: True when entries are dropped from the cache,
    False when the full cache is kept and attention is only masked. modes: supported subset of `MODES`.
    """

    name: ClassVar[str]
    attn_implementation: ClassVar[str] = "sdpa"
    frees_memory: ClassVar[bool]
    modes: ClassVar[tuple[str, ...]] = MODES

    def prefill_hooks(
        self, model: PreTrainedModel, n_context: int, n_keep: int, n_protected: int
    ) -> AbstractContextManager:
        """Context manager active during the prefill forward: keep `n_keep` of the first `n_context` entries
        and all `n_protected` entries after them (the question, in query-aware mode)."""
        return nullcontext()

    def decode_kwargs(self, n_context: int, n_keep: int) -> dict[str, Any]:
        """Extra model-forward kwargs for every forward after the prefill (question in query-agnostic mode,
        then each decode step)."""
        return {}

    def generate(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        context_ids: list[int],
        question_ids: list[int],
        budget: float | int,
        mode: str,
        max_new_tokens: int,
    ) -> GenerationResult:
        """Greedy generation for one example (batch 1) under this method; see `GenerationResult`.
        budget: float in (0, 1] = fraction of the context KV kept; int = number of context tokens kept."""
        self._check_call(context_ids, mode, max_new_tokens)
        n_context, n_keep = len(context_ids), n_kept_tokens(budget, len(context_ids))
        extra = self.decode_kwargs(n_context, n_keep)
        with (
            attention_implementation(model, self.attn_implementation),
            torch.inference_mode(),
            PeakMemory(model.device) as peak,
        ):
            clock, cache = Clock(model.device), DynamicCache()
            logits, full, kept = self._prefill(model, cache, list(context_ids), list(question_ids), n_keep, mode, extra)
            prefill_s = clock.lap()
            output_ids = greedy_decode(model, cache, logits, n_context + len(question_ids), max_new_tokens, **extra)
            decode_s = clock.lap()
        text = "" if tokenizer is None else tokenizer.decode(output_ids, skip_special_tokens=True)
        return GenerationResult(text, output_ids, full, kept, peak.peak_bytes, prefill_s, decode_s, n_context)

    def _prefill(
        self,
        model: PreTrainedModel,
        cache: DynamicCache,
        context_ids: list[int],
        question_ids: list[int],
        n_keep: int,
        mode: str,
        extra: dict[str, Any],
    ) -> tuple[torch.Tensor, int, int]:
        """Prefill (and compress) the prompt; return (first-step logits `[vocab]`, full bytes, kept bytes)."""
        aware = mode == "query_aware"
        n_protected = len(question_ids) if aware else 0
        with self.prefill_hooks(model, len(context_ids), n_keep, n_protected):
            logits = _forward(model, cache, context_ids + question_ids if aware else context_ids, 0)
        per_position = bytes_per_position(cache)
        kept = cache_bytes(cache) - n_protected * per_position
        if not aware and question_ids:
            logits = _forward(model, cache, question_ids, len(context_ids), **extra)
        return logits, len(context_ids) * per_position, kept

    def _check_call(self, context_ids: list[int], mode: str, max_new_tokens: int) -> None:
        if mode not in self.modes:
            raise ValueError(f"method {self.name!r} supports modes {self.modes}, got mode={mode!r}")
        if len(context_ids) == 0:
            raise ValueError(f"method {self.name!r}: context_ids is empty")
        if max_new_tokens < 1:
            raise ValueError(f"method {self.name!r}: max_new_tokens must be >= 1, got {max_new_tokens}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
