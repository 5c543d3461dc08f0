"""Model shapes of the bench, as ``ModelSpec`` literals (weights are always random-initialised).

Llama-3.2-1B and Llama-3.1-8B are the published configs (vocab 128256, GQA 8 KV heads, llama3 RoPE scaling);
``tiny-*`` are the 2-3 layer, hidden-64 shapes of the CPU smoke run.
"""

from __future__ import annotations

import dataclasses

from lcrecipes.models import ModelSpec, get_family


def _llama3_rope(factor: float) -> dict:
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }


LLAMA_32_1B = ModelSpec(
    family="llama", vocab_size=128256, hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
    ffn_hidden_size=8192, max_position_embeddings=131072, rope_theta=500000.0, rope_scaling=_llama3_rope(32.0),
    norm_eps=1e-5, tie_embeddings=True,
)  # fmt: skip

LLAMA_31_8B = ModelSpec(
    family="llama", vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
    ffn_hidden_size=14336, max_position_embeddings=131072, rope_theta=500000.0, rope_scaling=_llama3_rope(8.0),
    norm_eps=1e-5, tie_embeddings=False,
)  # fmt: skip

SPECS: dict[str, ModelSpec] = {
    "llama-3.2-1b": LLAMA_32_1B,
    "llama-3.1-8b": LLAMA_31_8B,
    "tiny-a": get_family("llama").tiny_spec(vocab_size=512),
    "tiny-b": get_family("llama").tiny_spec(vocab_size=512, num_layers=3, hidden_size=96, ffn_hidden_size=256),
}


def get_spec(name: str, **overrides) -> ModelSpec:
    """A copy of the spec registered as ``name`` with fields replaced by ``overrides``."""
    if name not in SPECS:
        raise KeyError(f"unknown bench model {name!r}; known: {sorted(SPECS)}")
    return dataclasses.replace(SPECS[name], **overrides)
