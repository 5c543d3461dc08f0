"""KV-cache compression methods for eval: kvpress presses, our top-k retrieval attention, and no compression.

    method = get_method("snapkv", window_size=32)
    result = method.generate(model, tokenizer, context_ids, question_ids, budget=0.25, mode="query_aware",
                             max_new_tokens=64)
    memory_claim_holds(method, result, budget=0.25)  # kept bytes fall with the budget (== full if masking)

Each method declares `attn_implementation`, `frees_memory` and `modes`; see `base.py` for the two modes and
`measure.py` for what is measured.
"""

from __future__ import annotations

from lcrecipes.eval.compression.base import (
    MODES,
    CompressionMethod,
    GenerationResult,
    expected_kept_fraction,
    n_kept_tokens,
)
from lcrecipes.eval.compression.expected_attention import ExpectedAttention
from lcrecipes.eval.compression.keydiff import KeyDiff
from lcrecipes.eval.compression.knorm import Knorm
from lcrecipes.eval.compression.none import NoCompression
from lcrecipes.eval.compression.snapkv import SnapKV
from lcrecipes.eval.compression.streamingllm import StreamingLLM
from lcrecipes.eval.compression.topk_retrieval import TopKRetrieval
from lcrecipes.eval.compression.tova import TOVA

METHODS: dict[str, type[CompressionMethod]] = {
    cls.name: cls
    for cls in (NoCompression, SnapKV, StreamingLLM, Knorm, TOVA, ExpectedAttention, KeyDiff, TopKRetrieval)
}


def get_method(name: str, **params) -> CompressionMethod:
    """Instantiate the method registered as `name` with its parameters (for presses: the press's fields)."""
    if name not in METHODS:
        raise ValueError(f"unknown compression method {name!r}; known: {sorted(METHODS)}")
    try:
        return METHODS[name](**params)
    except TypeError as err:
        raise ValueError(f"compression method {name!r} does not accept parameters {sorted(params)}: {err}") from err


def memory_claim_holds(
    method: CompressionMethod, result: GenerationResult, budget: float | int, rel_tol: float = 0.01
) -> bool:
    """True when the measured kept bytes match what the method declares: (1 - ratio) x full within `rel_tol`
    for methods that free memory, exactly full for masking ones. A report flags rows where this is False."""
    if not method.frees_memory:
        return result.kv_bytes_kept == result.kv_bytes_full
    expected = expected_kept_fraction(budget, result.n_context_tokens) * result.kv_bytes_full
    return abs(result.kv_bytes_kept - expected) <= rel_tol * expected


__all__ = [
    "METHODS",
    "MODES",
    "CompressionMethod",
    "GenerationResult",
    "get_method",
    "memory_claim_holds",
    "n_kept_tokens",
]
