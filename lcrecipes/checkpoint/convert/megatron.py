"""Megatron-Core checkpoints: ``<dir>/`` as written by ``dist_checkpointing.save`` (``torch_dist`` backend) of a
``GPTModel``'s sharded state dict, plus ``model_spec.json`` (our ``ModelSpec``).

The stored tensors are global (TP and PP independent): per-layer tensors are stacked on a leading layer axis
(``decoder.layers.mlp.linear_fc1.weight [L, 2*ffn, hidden]``, TE norm names), so a checkpoint saved at any TP/PP
layout reads the same. The reader fetches one layer at a time (``torch_dist.TorchDistFiles``); the writer stores
per-layer chunks like Megatron does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from lcrecipes.checkpoint.convert.base import (
    SPEC_FILE,
    Block,
    ConvertError,
    Reader,
    Writer,
    check_shape,
    read_spec,
    register_reader,
    register_writer,
    spec_hint,
    write_spec,
)
from lcrecipes.checkpoint.convert.reference import megatron_logits
from lcrecipes.checkpoint.convert.torch_dist import TorchDistFiles, save_torch_dist
from lcrecipes.models import ModelSpec
from lcrecipes.models.megatron_rope import rope_kwargs
from lcrecipes.models.megatron_weights import HF_LAYER, MG_EMBED, MG_HEAD, MG_NORM, expected_shapes, get_layout

log = logging.getLogger(__name__)

LAYER_KEY = "decoder.layers."
TOP_KEYS = (MG_EMBED, MG_NORM, MG_HEAD)
# Modules whose ``_extra_state`` (None for the local spec; fp8 metadata for Transformer Engine modules, which
# accept None) Megatron models expect in a checkpoint; core_attention's is only read by the TE spec.
EXTRA_STATE_MODULES = ("self_attention.linear_qkv", "self_attention.linear_proj", "self_attention.core_attention",
                       "mlp.linear_fc1", "mlp.linear_fc2")


def stored_key(rel: str) -> str:
    """Checkpoint key of a name from ``expected_shapes``: top-level names as they are, layer names stacked."""
    return rel if rel in TOP_KEYS else LAYER_KEY + rel


@register_reader
class MegatronReader(Reader):
    format = "megatron"

    def __init__(self, path: str | Path, **options) -> None:
        super().__init__(path)
        meta = self.path / "metadata.json"
        if not meta.is_file():
            raise ConvertError(f"{meta}: missing; {self.path} is not a dist_checkpointing checkpoint")
        backend = json.loads(meta.read_text()).get("sharded_backend")
        if backend != "torch_dist":
            raise ConvertError(f"{meta}: sharded_backend {backend!r} is not supported (only 'torch_dist')")
        self.spec = read_spec(self.path)
        self.files = TorchDistFiles(self.path)
        missing = self.files.missing_files()
        if missing:
            raise ConvertError(f"{missing[0]}: missing shard of the Megatron checkpoint (listed in "
                               f"{self.path / '.metadata'})")
        self._check_shapes()
        self.layer_keys = sorted(k for k in self.files.tensors if k.startswith(LAYER_KEY))

    def _check_shapes(self) -> None:
        spec, where, hint = self.spec, str(self.path), spec_hint(self.spec)
        if MG_HEAD in self.files.tensors and spec.tie_embeddings:
            raise ConvertError(f"{where}: has {MG_HEAD} but {SPEC_FILE} says tie_embeddings=true")
        for rel, shape in expected_shapes(spec).items():
            key = stored_key(rel)
            want = shape if rel in TOP_KEYS else (spec.num_layers, *shape)
            if key not in self.files.tensors:
                raise ConvertError(f"{where}: checkpoint lacks {key} that the model config needs ({hint}, "
                                   f"qkv_bias={spec.qkv_bias}, tie_embeddings={spec.tie_embeddings})")
            check_shape(where, key, self.files.shape(key), want, hint)

    def top(self) -> dict[str, Tensor]:
        """Embedding, final norm and (untied) output layer, Megatron names."""
        return self.files.read_rows([k for k in TOP_KEYS if k in self.files.tensors])

    def layer(self, i: int, buffers: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Layer ``i``'s tensors, names relative to ``decoder.layers.{i}.`` (checkpoint / TE names), read into
        ``buffers`` (checkpoint keys -> ``[1, ...]`` tensors) when given."""
        got = self.files.read_rows(self.layer_keys, i, i + 1, out=buffers)
        if buffers is not None:
            buffers.update(got)
        return {k[len(LAYER_KEY):]: v[0] for k, v in got.items()}

    def layers(self) -> Iterator[dict[str, Tensor]]:
        """Every layer in turn; the tensors of one layer are overwritten by the next (one set of buffers)."""
        buffers: dict[str, Tensor] = {}
        for i in range(self.spec.num_layers):
            yield self.layer(i, buffers)

    def blocks(self) -> Iterator[Block]:
        layout = get_layout(self.spec.family)
        top = layout.top_to_hf(self.spec, self.top())
        yield {"model.embed_tokens.weight": top.pop("model.embed_tokens.weight")}
        for i, layer in enumerate(self.layers()):
            prefix = HF_LAYER.format(i=i)
            yield {prefix + k: v for k, v in layout.layer_to_hf(self.spec, layer).items()}
        yield top

    def logits(self, input_ids: Tensor) -> Tensor:
        return megatron_logits(self.spec, self.top(), self.layers(), input_ids)

    def source_dtype(self) -> torch.dtype:
        return self.files.dtype(MG_EMBED)


@register_writer
class MegatronWriter(Writer):
    """Writes TE/checkpoint names, one chunk per layer (as Megatron does), plus ``model_spec.json``. The whole
    model is held in memory (in the output dtype) until the single checkpoint save."""

    format = "megatron"

    def write(self, spec: ModelSpec, blocks: Iterator[Block], out_dir: Path, dtype: torch.dtype,
              reader: Reader) -> None:
        layout = get_layout(spec.family)
        try:
            rope_kwargs(spec)  # RoPE scalings Megatron cannot run
            layout.check(spec)
        except ValueError as e:
            raise ConvertError(f"{reader.path}: cannot be a Megatron model: {e}") from e
        shapes = {stored_key(rel): s if rel in TOP_KEYS else (spec.num_layers, *s)
                  for rel, s in expected_shapes(spec).items()}
        chunks: dict[str, dict[tuple, Tensor]] = {k: {} for k in shapes}
        for block in blocks:
            layer = _layer_index(block)
            if layer is None:
                for k, v in layout.top_to_megatron(spec, block).items():
                    chunks[k][(0,) * v.dim()] = v.to(dtype, copy=True).contiguous()
                continue
            prefix = HF_LAYER.format(i=layer)
            rel = layout.layer_to_megatron(spec, {k[len(prefix):]: v for k, v in block.items()}, names="te")
            for k, v in rel.items():
                chunks[LAYER_KEY + k][(layer,) + (0,) * v.dim()] = v.to(dtype, copy=True).contiguous().unsqueeze(0)
        incomplete = [k for k, parts in chunks.items() if len(parts) != (1 if k in TOP_KEYS else spec.num_layers)]
        if incomplete:
            raise ConvertError(f"{reader.path}: the checkpoint yielded no (or not every layer's) {incomplete[:3]}")
        objects = {f"{LAYER_KEY}{mod}._extra_state/shard_{i}_{spec.num_layers}": [None]
                   for mod in EXTRA_STATE_MODULES for i in range(spec.num_layers)}
        save_torch_dist(chunks, shapes, objects, out_dir)
        write_spec(spec, out_dir)


def _layer_index(block: Block) -> int | None:
    """The layer a block belongs to, or None for a top-level block."""
    first = next(iter(block))
    if not first.startswith("model.layers."):
        return None
    return int(first.split(".")[2])
