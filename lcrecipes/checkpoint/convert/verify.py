"""``--verify``: run the same token ids through the source and the converted checkpoint on CPU and compare logits.

Both sides compute in fp32 from their stored weights: HF checkpoints with transformers, DeepSpeed checkpoints with
transformers on the ``zero_to_fp32`` weights, Megatron checkpoints with ``reference.megatron_logits`` (Megatron's
own math, read straight from the checkpoint, independent of the converter). The allowed difference depends on the
output dtype: an fp32 (or same-dtype) result must match to fp32 round-off of two implementations; a result cast
to a narrower dtype may differ by that dtype's rounding of the weights. The tolerance is relative to the largest
reference logit: ``max|a - b| <= tol * max(1, max|a|)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from lcrecipes.checkpoint.convert.base import ConvertError, Reader

log = logging.getLogger(__name__)

# Exact/same-precision results: only the op order of two fp32 implementations differs (measured <= 1e-6 on the
# tiny test models). Narrowed results: weights rounded to bf16 (8 bits of mantissa) / fp16 (11 bits).
LOSSLESS_TOL = 1e-5
NARROWED_TOL = {torch.bfloat16: 5e-2, torch.float16: 1e-2}


class VerifyError(ConvertError):
    """The converted checkpoint's logits differ from the source's by more than the stated tolerance."""


@dataclass
class VerifyResult:
    max_abs_diff: float
    max_abs_logit: float
    tolerance: float  # allowed max_abs_diff

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def line(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (f"verify {verdict}: max |logit difference| = {self.max_abs_diff:.3e} "
                f"(tolerance {self.tolerance:.3e}; largest |logit| {self.max_abs_logit:.3e})")


def tolerance(src_dtype: torch.dtype, out_dtype: torch.dtype) -> float:
    """Relative tolerance: lossless unless the output is narrower than the source."""
    if out_dtype in (src_dtype, torch.float32):
        return LOSSLESS_TOL
    return NARROWED_TOL[out_dtype]


def probe_ids(vocab_size: int, batch: int = 2, seq: int = 24, seed: int = 0) -> torch.Tensor:
    """``[batch, seq]`` token ids drawn from the whole vocabulary with a fixed seed."""
    return torch.randint(0, vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


def compare(source: Reader, result: Reader, out_dtype: torch.dtype, seq: int = 24) -> VerifyResult:
    """Logits of both checkpoints for the same ids; raise ``VerifyError`` when over the tolerance."""
    ids = probe_ids(source.spec.vocab_size, seq=min(seq, source.spec.max_position_embeddings))
    ref, got = source.logits(ids), result.logits(ids)
    if ref.shape != got.shape:
        raise VerifyError(f"logit shapes differ: source {tuple(ref.shape)}, result {tuple(got.shape)}")
    scale = float(ref.abs().max())
    res = VerifyResult(float((ref - got).abs().max()), scale,
                       tolerance(source.source_dtype(), out_dtype) * max(1.0, scale))
    log.info("%s", res.line())
    if not res.ok:
        raise VerifyError(f"{result.path}: {res.line()}")
    return res
