"""This rank's Megatron weights read straight from a HF checkpoint's safetensors files, slice by slice.

    with SafetensorsDir(hf_dir) as files:
        sd = hf_dir_to_megatron(spec, files, tp_rank=1, tp_size=2, layers=range(16, 32), pre_process=False)
    files.bytes_read  # bytes of tensor data this rank read (about 1 / (TP x PP) of the checkpoint)

Equal to ``hf_to_megatron(spec, full_hf_state_dict, ...)`` tensor for tensor, without building the HF model: each
Megatron tensor of this (TP rank, PP stage) is the concatenation along dim 0 of a few slices of HF tensors
(``rank_pieces``), read with ``safe_open(...).get_slice(name)[index]`` (the rest of the file is never read).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from lcrecipes.models.megatron_weights import COMBINE, TP_SPLIT, megatron_plan, tensor_kind
from lcrecipes.models.spec import ModelSpec

INDEX, SINGLE = "model.safetensors.index.json", "model.safetensors"
Piece = tuple[str, tuple[slice, ...]]  # (HF tensor name, index into it)


class SafetensorsDir(contextlib.AbstractContextManager):
    """The tensors of a HF checkpoint directory (``model.safetensors``, or shards listed in
    ``model.safetensors.index.json``), read by slices. ``bytes_read`` counts the tensor bytes read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.weight_map = self._weight_map()
        self.bytes_read = 0
        self._files = contextlib.ExitStack()
        self._open: dict[str, object] = {}

    def _weight_map(self) -> dict[str, str]:
        index, single = self.path / INDEX, self.path / SINGLE
        if index.is_file():
            return json.loads(index.read_text())["weight_map"]
        if single.is_file():
            with safe_open(single, framework="pt") as f:
                return {k: SINGLE for k in f.keys()}
        raise FileNotFoundError(f"{self.path}: no {INDEX} or {SINGLE} (model.hf_path must hold safetensors)")

    def _slice(self, name: str):
        if name not in self.weight_map:
            raise KeyError(f"{self.path}: no tensor {name} in the checkpoint")
        file = self.weight_map[name]
        if file not in self._open:
            self._open[file] = self._files.enter_context(safe_open(self.path / file, framework="pt"))
        return self._open[file].get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def read(self, pieces: list[Piece]) -> Tensor:
        """The pieces concatenated along dim 0 (each one read on its own: only its bytes leave the file)."""
        parts = [self._slice(name)[index] for name, index in pieces]
        self.bytes_read += sum(p.numel() * p.element_size() for p in parts)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def __exit__(self, *exc) -> None:
        self._files.close()
        self._open.clear()


def _even_split(n: int, tp_rank: int, tp_size: int, what: str) -> tuple[int, int]:
    """Rows (or columns) ``[start, end)`` of TP rank ``tp_rank`` in a dimension of size ``n``."""
    if n % tp_size:
        raise ValueError(f"{what}: size {n} does not split over tp={tp_size}")
    per = n // tp_size
    return tp_rank * per, (tp_rank + 1) * per


def _rows(segments: list[tuple[str, int, int]], start: int, end: int) -> list[Piece]:
    """Rows ``[start, end)`` of the concatenation of ``segments`` (HF name, first row, end row)."""
    out, at = [], 0
    for name, s0, s1 in segments:
        lo, hi = max(start, at), min(end, at + s1 - s0)
        if lo < hi:
            out.append((name, (slice(s0 + lo - at, s0 + hi - at),)))
        at += s1 - s0
    return out


def _segments(spec: ModelSpec, name: str, sources: tuple[str, ...], rows: dict[str, int]) -> list[tuple]:
    """The HF row ranges that, in order, make the full Megatron tensor (q, k, v grouped per KV group)."""
    if COMBINE.get(tensor_kind(name)) != "qkv":
        return [(s, 0, rows[s]) for s in sources]
    q, k, v = sources
    g, d = spec.num_kv_heads, spec.head_dim
    per_q = spec.q_size // g
    return [seg for j in range(g) for seg in ((q, j * per_q, (j + 1) * per_q), (k, j * d, (j + 1) * d),
                                              (v, j * d, (j + 1) * d))]


def rank_pieces(spec: ModelSpec, name: str, sources: tuple[str, ...], shapes: dict[str, tuple[int, ...]],
                tp_rank: int = 0, tp_size: int = 1) -> list[Piece]:
    """The HF slices whose concatenation along dim 0 is TP rank ``tp_rank``'s part of Megatron tensor ``name``
    (``tp_shard(name, combine(spec, name, [hf[s] for s in sources]), tp_rank, tp_size)``)."""
    rule = TP_SPLIT[tensor_kind(name)]
    rows = {s: shapes[s][0] for s in sources}
    segments = _segments(spec, name, sources, rows)
    if rule is None or tp_size == 1:
        return _rows(segments, 0, sum(rows.values()))
    if rule == 1:  # row parallel: a column block of the one source
        (src,) = sources
        c0, c1 = _even_split(shapes[src][1], tp_rank, tp_size, name)
        return [(src, (slice(None), slice(c0, c1)))]
    if COMBINE.get(tensor_kind(name)) == "glu":  # gate and up are split apart: [gate_r; up_r]
        return [p for s in sources for p in _rows([(s, 0, rows[s])], *_even_split(rows[s], tp_rank, tp_size, name))]
    return _rows(segments, *_even_split(sum(rows.values()), tp_rank, tp_size, name))


def hf_dir_to_megatron(spec: ModelSpec, files: SafetensorsDir, *, names: str = "local", tp_rank: int = 0,
                       tp_size: int = 1, layers: range | None = None, pre_process: bool = True,
                       post_process: bool = True) -> dict[str, Tensor]:
    """``hf_to_megatron`` (same arguments) reading only this rank's slices from ``files`` (stored dtype)."""
    plan = megatron_plan(spec, names=names, layers=layers, pre_process=pre_process, post_process=post_process)
    out = {}
    for mg, sources in plan.items():
        shapes = {s: files.shape(s) for s in sources}
        out[mg] = files.read(rank_pieces(spec, mg, sources, shapes, tp_rank, tp_size))
    return out
