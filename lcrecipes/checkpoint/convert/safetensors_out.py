"""Streaming sharded safetensors output: every tensor is written to its place the moment it arrives.

The shard layout is planned before any weight is read (names, shapes and the output dtype are known from the
spec), so each shard's header is written first and each tensor's bytes go straight to their offset (``pwrite``,
no copy). Memory holds only the block being converted, never a shard. The format: an 8-byte little-endian header
length, a JSON header ``{name: {dtype, shape, data_offsets}, "__metadata__": {...}}`` padded to 8 bytes, then the
raw little-endian tensor bytes.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


@dataclass
class Shard:
    file: str
    entries: dict[str, tuple[tuple[int, ...], int, int]] = field(default_factory=dict)  # name -> shape, start, end
    size: int = 0  # bytes of tensor data

    def header(self, dtype: torch.dtype) -> bytes:
        head = {n: {"dtype": ST_DTYPES[dtype], "shape": list(s), "data_offsets": [a, b]}
                for n, (s, a, b) in self.entries.items()}
        raw = json.dumps({"__metadata__": {"format": "pt"}, **head}, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        return struct.pack("<Q", len(raw)) + raw


def plan_shards(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, max_bytes: int) -> list[Shard]:
    """Assign tensors (in order) to shards of at most ``max_bytes`` (a larger tensor gets a shard of its own)."""
    item = torch.empty((), dtype=dtype).element_size()
    shards = [Shard("")]
    for name, shape in shapes.items():
        nbytes = item * int(torch.Size(shape).numel())
        if shards[-1].entries and shards[-1].size + nbytes > max_bytes:
            shards.append(Shard(""))
        last = shards[-1]
        last.entries[name] = (tuple(shape), last.size, last.size + nbytes)
        last.size += nbytes
    for i, shard in enumerate(shards):
        shard.file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    return shards


WRITE_CHUNK = 16 << 20  # bytes per pwrite: one huge write into a fresh file is several times slower here


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data[:WRITE_CHUNK], offset)
        data, offset = data[n:], offset + n


class ShardedSafetensorsWriter:
    """Open all planned shard files; ``put(name, tensor)`` writes one tensor; ``close()`` checks completeness,
    fsyncs and writes ``model.safetensors.index.json``."""

    def __init__(self, out_dir: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, max_bytes: int):
        if sys.byteorder != "little":
            raise RuntimeError("safetensors output needs a little-endian machine")
        self.out_dir, self.dtype = Path(out_dir), dtype
        self.shards = plan_shards(shapes, dtype, max_bytes)
        self.where = {n: s for s in self.shards for n in s.entries}
        self.pending = set(self.where)
        self.fds, self.data_start = {}, {}
        for s in self.shards:
            head = s.header(dtype)
            fd = os.open(self.out_dir / s.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            _pwrite_all(fd, memoryview(head), 0)
            self.fds[s.file], self.data_start[s.file] = fd, len(head)

    def put(self, name: str, t: Tensor) -> None:
        shard = self.where[name]
        shape, start, end = shard.entries[name]
        t = t.detach().to(self.dtype).contiguous()
        if tuple(t.shape) != shape or name not in self.pending:
            raise ValueError(f"{name}: shape {tuple(t.shape)} (planned {shape}) or written twice")
        raw = memoryview(t.view(torch.uint8).reshape(-1).numpy()) if t.numel() else memoryview(b"")
        _pwrite_all(self.fds[shard.file], raw, self.data_start[shard.file] + start)
        self.pending.discard(name)

    def close(self) -> None:
        if self.pending:
            raise ValueError(f"tensors never written: {sorted(self.pending)[:3]}")
        for fd in self.fds.values():
            os.fsync(fd)
        self.abort()
        index = {"metadata": {"total_size": sum(s.size for s in self.shards)},
                 "weight_map": {n: s.file for n, s in sorted(self.where.items())}}
        (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    def abort(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
