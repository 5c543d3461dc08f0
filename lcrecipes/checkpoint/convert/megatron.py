"""Megatron-Core checkpoints: ``<dir>/`` as written by ``dist_checkpointing.save`` (``torch_dist`` backend) of a
``GPTModel``'s sharded state dict, plus ``model_spec.json`` (our ``ModelSpec``).

The stored tensors are global (TP and PP independent): per-layer tensors are stacked on a leading layer axis
(``decoder.layers.mlp.linear_fc1.weight [L, 2*ffn, hidden]``, TE norm names), so a checkpoint saved at any TP/PP
layout reads the same. The reader maps one layer at a time (``torch_dist.TorchDistFiles.map_rows``: nothing is
copied until touched); for a writer that copies bytes it hands over the file pieces of each HF tensor instead
(``stored_blocks``: the layout's row moves, found by ``trace_rows``, applied to byte ranges), so a same-dtype
Megatron -> HF conversion is a kernel file-to-file copy. The writer stores per-layer chunks like Megatron does.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from lcrecipes.checkpoint.convert.base import (
    SPEC_FILE,
    Block,
    ConvertError,
    Piece,
    Reader,
    StoredBlock,
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
        short = self.files.short_files()
        if short:
            file, size, need = short[0]
            raise ConvertError(f"{file}: truncated: {size} bytes, but {self.path / '.metadata'} places records up "
                               f"to byte {need}")
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
        """Embedding, final norm and (untied) output layer, Megatron names (memory maps of the file where it
        can: ``TorchDistFiles.map_rows``)."""
        return self.files.map_rows([k for k in TOP_KEYS if k in self.files.tensors])

    def layer(self, i: int) -> dict[str, Tensor]:
        """Layer ``i``'s tensors, names relative to ``decoder.layers.{i}.`` (checkpoint / TE names), mapped from
        the file where it can (no copy; the pages are released when the tensors are dropped)."""
        got = self.files.map_rows(self.layer_keys, i, i + 1)
        return {k[len(LAYER_KEY):]: v[0] for k, v in got.items()}

    def layers(self) -> Iterator[dict[str, Tensor]]:
        """Every layer in turn."""
        for i in range(self.spec.num_layers):
            yield self.layer(i)

    def blocks(self) -> Iterator[Block]:
        layout = get_layout(self.spec.family)
        top = layout.top_to_hf(self.spec, self.top())
        yield {"model.embed_tokens.weight": top.pop("model.embed_tokens.weight")}
        for i, layer in enumerate(self.layers()):
            prefix = HF_LAYER.format(i=i)
            yield {prefix + k: v for k, v in layout.layer_to_hf(self.spec, layer).items()}
        yield top

    def stored_blocks(self, dtype: torch.dtype) -> Iterator[StoredBlock]:
        """``blocks()`` with every tensor that is rows of one stored tensor (all of them in the llama and qwen2
        layouts: renames, ``chunk`` and the qkv split) given as the file pieces of those rows (nothing read)."""
        layout, spec = get_layout(self.spec.family), self.spec
        top_keys = [k for k in TOP_KEYS if k in self.files.tensors]
        top_plan = trace_rows(lambda mg: layout.top_to_hf(spec, mg), {k: self.files.shape(k) for k in top_keys})
        layer_plan = trace_rows(lambda mg: layout.layer_to_hf(spec, mg),
                                {k[len(LAYER_KEY):]: self.files.shape(k)[1:] for k in self.layer_keys})
        if top_plan is None or layer_plan is None:
            yield from self.blocks()
            return
        top = self._stored(top_plan, None, dtype, lambda: layout.top_to_hf(spec, self.top()))
        yield {"model.embed_tokens.weight": top.pop("model.embed_tokens.weight")}
        for i in range(spec.num_layers):
            got = self._stored(layer_plan, i, dtype, lambda i=i: layout.layer_to_hf(spec, self.layer(i)))
            yield {HF_LAYER.format(i=i) + k: v for k, v in got.items()}
        yield top

    def _stored(self, plan: RowPlan, layer: int | None, dtype: torch.dtype,
                compute: Callable[[], dict[str, Tensor]]) -> StoredBlock:
        """``plan``'s outputs (layer ``layer``'s, or the top level's for None) as file pieces where they are stored
        plainly in ``dtype``; the others taken from ``compute()`` (the layout run on the tensors)."""
        out = {name: self._pieces(src, layer, dtype) if src else None for name, src in plan.items()}
        if any(v is None for v in out.values()):
            real = compute()
            out = {name: real[name] if v is None else v for name, v in out.items()}
        return out

    def _pieces(self, src: tuple[str, list[tuple[int, int]]], layer: int | None,
                dtype: torch.dtype) -> list[Piece] | None:
        """File pieces of rows ``src = (stored name, row runs)`` of layer ``layer`` (None: a top-level tensor)."""
        rel, rows = src
        key = rel if layer is None else LAYER_KEY + rel
        if self.files.dtype(key) != dtype:
            return None
        shape = self.files.shape(key)[0 if layer is None else 1:]
        inner, base = math.prod(shape[1:]), 0 if layer is None else layer * math.prod(shape)
        return self.files.byte_pieces(key, [(base + a * inner, base + b * inner) for a, b in rows])

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


ROW_BITS = 40  # row-number tensors of ``trace_rows`` hold ``input index << ROW_BITS | row``
RowPlan = dict[str, tuple[str, list[tuple[int, int]]] | None]


def trace_rows(fn: Callable[[dict[str, Tensor]], dict[str, Tensor]],
               shapes: dict[str, tuple[int, ...]]) -> RowPlan | None:
    """What a layout function ``fn`` (dict of tensors -> dict of tensors) does with rows: for each output that is
    rows of one input, in some order, ``(input name, [(start, stop) runs of consecutive rows])``; None for other
    outputs. Found by running ``fn`` on meta tensors of ``shapes`` (the real output shapes) and on row-number
    tensors ``[rows, 1, ...]``: an output whose numbers are not valid rows of one input of the same trailing shape
    (arithmetic, a cast, a transpose) is not a row selection. None when ``fn`` fails on these inputs."""
    names = list(shapes)
    ids = {k: (torch.arange(s[0]) + (j << ROW_BITS)).view(s[0], *(1,) * (len(s) - 1)) for j, (k, s) in
           enumerate(shapes.items())}
    try:
        real, traced = fn({k: torch.empty(s, device="meta") for k, s in shapes.items()}), fn(ids)
    except (RuntimeError, ValueError, IndexError, KeyError, TypeError):
        return None
    plan: RowPlan = {}
    for name, want in real.items():
        t, plan[name] = traced.get(name), None
        if t is None or t.dtype != torch.int64 or t.shape != (want.shape[0], *(1,) * (want.dim() - 1)) or not len(t):
            continue
        src, rows = t.reshape(-1) >> ROW_BITS, t.reshape(-1) & ((1 << ROW_BITS) - 1)
        j = int(src[0])
        if not 0 <= j < len(names) or (src != j).any() or shapes[names[j]][1:] != tuple(want.shape[1:]) \
                or int(rows.max()) >= shapes[names[j]][0]:
            continue
        cuts = [0, *(torch.nonzero(rows[1:] != rows[:-1] + 1).view(-1) + 1).tolist(), len(rows)]
        plan[name] = (names[j], [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(cuts[:-1], cuts[1:])])
    return plan


def _layer_index(block: Block) -> int | None:
    """The layer a block belongs to, or None for a top-level block."""
    first = next(iter(block))
    if not first.startswith("model.layers."):
        return None
    return int(first.split(".")[2])
