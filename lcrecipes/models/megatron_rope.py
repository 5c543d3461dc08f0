"""RoPE of a ``ModelSpec`` in Megatron-Core's terms (``GPTModel`` keyword arguments); no Megatron import, so
converters and planners can check a spec without loading Megatron."""

from __future__ import annotations

from typing import Any

from lcrecipes.models.spec import ModelSpec

# Megatron's llama3 RoPE scaling hard-codes these (RotaryEmbedding._apply_scaling); only ``factor`` is free.
MEGATRON_LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


class UnsupportedRopeError(ValueError):
    """The spec's ``rope_scaling`` has no exact Megatron-Core equivalent."""


def rope_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """``GPTModel`` keyword arguments for the spec's RoPE: base, llama3 scaling or linear interpolation.

    Raises ``UnsupportedRopeError`` for scalings Megatron-Core cannot reproduce exactly (yarn, dynamic, longrope,
    llama3 with non-default low/high frequency factors or original context)."""
    out: dict[str, Any] = {"position_embedding_type": "rope", "rotary_base": spec.rope_theta}
    scaling = dict(spec.rope_scaling or {})
    kind = scaling.pop("rope_type", scaling.pop("type", "default"))
    if kind == "default":
        return out
    if kind == "linear":
        return {**out, "seq_len_interpolation_factor": float(scaling["factor"])}
    if kind == "llama3":
        fixed = {k: float(scaling.get(k, v)) for k, v in MEGATRON_LLAMA3_FIXED.items()}
        if fixed != MEGATRON_LLAMA3_FIXED:
            raise UnsupportedRopeError(
                f"model.rope_scaling: Megatron-Core's llama3 RoPE scaling fixes {MEGATRON_LLAMA3_FIXED}; got {fixed}")
        return {**out, "rope_scaling": True, "rope_scaling_factor": float(scaling["factor"])}
    raise UnsupportedRopeError(
        f"model.rope_scaling: rope_type {kind!r} is not supported by the Megatron backend "
        "(supported: default, linear, llama3); use the deepspeed backend for this model")
