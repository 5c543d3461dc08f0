"""Checkpoint formats as plugins: a ``Reader`` streams a checkpoint as HF-named tensors, a ``Writer`` consumes them.

A conversion is ``WRITERS[to](READERS[from](src).blocks())``: tensors travel one *block* at a time (the
embedding, one transformer layer, the final norm + output layer), so memory holds a block plus what the writer
buffers (one output shard for HF). Family-specific layout (fused qkv, fc1 = [gate; up], norm names) lives in
``lcrecipes.models.megatron_weights``; each reader/writer is one direction of one format.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from lcrecipes.models import ModelSpec, get_family

log = logging.getLogger(__name__)

Block = dict[str, Tensor]  # HF names (``model.layers.3.self_attn.q_proj.weight`` ...) -> full tensors
Piece = tuple[Path, int, int]  # (file, byte offset, byte count)
# A block whose tensors may instead be the pieces of source files that, concatenated, hold their bytes.
StoredBlock = dict[str, Tensor | list[Piece]]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SPEC_FILE = "model_spec.json"  # our ModelSpec, saved beside Megatron and DeepSpeed checkpoints


class ConvertError(RuntimeError):
    """A checkpoint cannot be converted; the message names the file and key at fault."""


class Reader:
    """One source format. Subclasses set ``format``, read ``self.spec`` in ``__init__`` (validating it against the
    stored tensor shapes) and fill ``blocks`` and ``logits``."""

    format: ClassVar[str]

    def __init__(self, path: str | Path, **options: Any) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ConvertError(f"{self.path}: no such checkpoint")
        self.spec: ModelSpec

    def blocks(self) -> Iterator[Block]:
        """The model's tensors by HF name, in order: embedding, layers 0..L-1, final norm (+ untied lm_head).
        Tied embeddings have no ``lm_head.weight``. A block's tensors may be reused for the next block: a writer
        that keeps them past the next block must copy them."""
        raise NotImplementedError

    def stored_blocks(self, dtype: torch.dtype) -> Iterator[StoredBlock]:
        """``blocks()`` for writers that copy bytes (``Writer.copies_stored_bytes``): a tensor the source stores
        as it is (in ``dtype``, its rows in the HF order) may come as the file pieces holding its bytes instead of
        being read. The default reads everything."""
        return self.blocks()

    def logits(self, input_ids: Tensor) -> Tensor:
        """``[batch, seq, vocab]`` fp32 logits of this checkpoint's own model for ``input_ids [batch, seq]``,
        computed on CPU in fp32 (for ``--verify``)."""
        raise NotImplementedError

    def source_dtype(self) -> torch.dtype:
        """The dtype the weights are stored in (used when the output dtype is ``auto``)."""
        return torch.float32

    def tokenizer_dir(self) -> Path | None:
        """A directory holding this run's tokenizer files (searched beside the checkpoint), or None."""
        return find_tokenizer_dir(self.path)


class Writer:
    """One destination format: ``write`` consumes the block stream into ``out_dir`` (an empty temporary
    directory that the caller renames on success)."""

    format: ClassVar[str]
    copies_stored_bytes: ClassVar[bool] = False  # True: ``write`` takes ``Reader.stored_blocks`` (file pieces)

    def __init__(self, **options: Any) -> None:
        self.options = options  # format-specific; writers ignore the options they do not use

    def write(self, spec: ModelSpec, blocks: Iterator[Block], out_dir: Path, dtype: torch.dtype,
              reader: Reader) -> None:
        raise NotImplementedError


READERS: dict[str, type[Reader]] = {}
WRITERS: dict[str, type[Writer]] = {}


def register_reader(cls: type[Reader]) -> type[Reader]:
    READERS[cls.format] = cls
    return cls


def register_writer(cls: type[Writer]) -> type[Writer]:
    WRITERS[cls.format] = cls
    return cls


def check_shape(where: str, key: str, got: tuple[int, ...], want: tuple[int, ...], hint: str) -> None:
    """Raise a ``ConvertError`` naming the file, the key and the spec fields behind the expected shape."""
    if tuple(got) != tuple(want):
        raise ConvertError(f"{where}: {key} has shape {tuple(got)} but the model config implies {tuple(want)} "
                           f"({hint}); the config does not match the weights")


def spec_hint(spec: ModelSpec) -> str:
    return (f"vocab_size={spec.vocab_size}, hidden_size={spec.hidden_size}, num_heads={spec.num_heads}, "
            f"num_kv_heads={spec.num_kv_heads}, head_dim={spec.head_dim}, ffn_hidden_size={spec.ffn_hidden_size}")


def read_spec(path: Path) -> ModelSpec:
    """``<path>/model_spec.json`` -> ``ModelSpec`` (family checked against the registry)."""
    f = path / SPEC_FILE
    if not f.is_file():
        raise ConvertError(f"{f}: missing; a Megatron checkpoint directory holds dist_checkpointing files plus "
                           f"{SPEC_FILE} (our ModelSpec)")
    try:
        spec = ModelSpec(**json.loads(f.read_text()))
    except (TypeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{f}: not a valid ModelSpec: {e}") from e
    try:
        get_family(spec.family)
    except KeyError as e:
        raise ConvertError(f"{f}: {e}") from e
    return spec


def write_spec(spec: ModelSpec, path: Path) -> None:
    (path / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2, sort_keys=True) + "\n")


def find_tokenizer_dir(start: Path, levels: int = 3) -> Path | None:
    """The first of ``start`` and its ``levels`` ancestors (or their ``tokenizer/`` folders) holding tokenizer
    files; a run's checkpoints sit at ``<run>/checkpoints/step_N/...``."""
    for d in [start, *list(start.resolve().parents)[:levels]]:
        for cand in (d, d / "tokenizer"):
            if cand.is_dir() and any((cand / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
                return cand
    return None
