"""Checkpoint conversion: ``convert("megatron", "hf", src, dst)`` (and megatron <- hf, deepspeed -> hf).

Readers and writers are registered by format name (``READERS`` / ``WRITERS``); HF <-> Megatron layout per model
family lives in ``lcrecipes.models.megatron_weights.LAYOUTS``. The result is written into a temporary sibling of
``dst`` and renamed only after it is complete (and verified, with ``verify=True``), so a failed conversion never
leaves a partial ``dst``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from lcrecipes.checkpoint.convert import deepspeed, hf, megatron  # noqa: F401  (register the formats)
from lcrecipes.checkpoint.convert.base import DTYPES, READERS, WRITERS, ConvertError, Reader, Writer
from lcrecipes.checkpoint.convert.verify import VerifyError, VerifyResult, compare
from lcrecipes.utils.io import atomic_dir

log = logging.getLogger(__name__)


@dataclass
class ConvertResult:
    dst: Path
    dtype: str
    seconds: float
    verify: VerifyResult | None = None


def _pick(table: dict, fmt: str, what: str):
    if fmt not in table:
        raise ConvertError(f"unknown {what} format {fmt!r}; known: {', '.join(sorted(table))}")
    return table[fmt]


def convert(src_format: str, dst_format: str, src: str | Path, dst: str | Path, *, dtype: str = "auto",
            verify: bool = False, overwrite: bool = False, tag: str | None = None,
            tokenizer: str | Path | None = None, max_shard_bytes: int = hf.DEFAULT_SHARD_BYTES) -> ConvertResult:
    """Convert ``src`` (``src_format``) into a new directory ``dst`` (``dst_format``).

    ``dtype``: ``auto`` (the source's storage dtype), ``fp32``, ``bf16`` or ``fp16``. ``tag``: DeepSpeed tag
    folder. ``tokenizer``: directory to copy tokenizer files from (default: found next to the source)."""
    start = time.perf_counter()
    reader: Reader = _pick(READERS, src_format, "source")(src, tag=tag)
    writer: Writer = _pick(WRITERS, dst_format, "destination")(max_shard_bytes=max_shard_bytes, tokenizer=tokenizer)
    if dtype != "auto" and dtype not in DTYPES:
        raise ConvertError(f"unknown dtype {dtype!r}; known: auto, {', '.join(DTYPES)}")
    out_dtype = reader.source_dtype() if dtype == "auto" else DTYPES[dtype]
    name = {v: k for k, v in DTYPES.items()}[out_dtype]
    log.info("converting %s (%s, %s) -> %s (%s, %s)", src, src_format, reader.spec.family, dst, dst_format, name)
    checked = None
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        blocks = reader.stored_blocks(out_dtype) if writer.copies_stored_bytes else reader.blocks()
        writer.write(reader.spec, blocks, tmp, out_dtype, reader)
        if verify:
            checked = compare(reader, READERS[dst_format](tmp), out_dtype)
    return ConvertResult(Path(dst), name, time.perf_counter() - start, checked)


__all__ = ["READERS", "WRITERS", "ConvertError", "ConvertResult", "VerifyError", "convert"]
