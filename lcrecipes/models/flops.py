"""Training FLOPs and MFU: the one formula used by the trainer, the planner and the benchmarks.

FLOPs for one packed sequence of T tokens = 6·N·T + 6·L·d·Σ_doc S_doc², where N = parameters in matrix
products (output layer in, input embedding out), L = layers, d = heads × head_dim and S_doc = each document's
length. The attention term is causal attention (half of full attention's 12·L·d·S²), forward + backward.
Recomputation (activation checkpointing) is not counted, so MFU is comparable across checkpointing settings.
"""

from __future__ import annotations

from collections.abc import Iterable

from lcrecipes.models.spec import ModelSpec

# Peak dense bf16 tensor-core FLOP/s per device, for MFU. CPU has no meaningful peak: MFU is reported
# against ``peak_flops`` given by the user (train.peak_tflops) or left as 0 when unknown.
KNOWN_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "B200": 2250.0}


def training_flops(spec: ModelSpec, doc_lens: Iterable[int]) -> float:
    """FLOPs (forward + backward) to train on one packed sequence whose documents have ``doc_lens`` tokens."""
    lens = [int(s) for s in doc_lens]
    tokens = sum(lens)
    attn = 6 * spec.num_layers * spec.q_size * sum(s * s for s in lens)
    return 6.0 * spec.matmul_params() * tokens + float(attn)


def mfu(flops: float, seconds: float, n_devices: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation in [0, 1]; 0 when the peak is unknown (``peak_tflops <= 0``)."""
    if peak_tflops <= 0 or seconds <= 0:
        return 0.0
    return flops / (seconds * n_devices * peak_tflops * 1e12)
