"""Streaming sharded safetensors output: every tensor is written to its place the moment it arrives.

The shard layout is planned before any weight is read (names, shapes and the output dtype are known from the
spec), so each shard's header is written first and each tensor's bytes go straight to their offset: copied file
to file by the kernel when the reader hands over where they lie (``copy``, from ``Reader.stored_blocks``), else
written from the tensor's memory (``put``: ``pwrite``, no copy). Memory holds only the block being converted, never
a shard. The format: an 8-byte little-endian header length, a JSON header ``{name: {dtype, shape, data_offsets},
"__metadata__": {...}}`` padded to 8 bytes, then the raw little-endian tensor bytes.
"""

from __future__ import annotations

import errno
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


UNSUPPORTED = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}
WRITE_CHUNK = 16 << 20  # bytes per pwrite: one huge write into a fresh file is several times slower here


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data[:WRITE_CHUNK], offset)
        data, offset = data[n:], offset + n


def _copy_range(src: int, src_offset: int, dst: int, dst_offset: int, nbytes: int) -> bool:
    """Kernel copy of ``nbytes`` between open files; False (nothing copied) where unsupported."""
    done = 0
    try:
        while done < nbytes:
            n = os.copy_file_range(src, dst, nbytes - done, src_offset + done, dst_offset + done)
            if n == 0:
                raise OSError(f"source file ends before byte {src_offset + nbytes}")
            done += n
    except OSError as e:
        if done or e.errno not in UNSUPPORTED:
            raise
        return False
    return True


def _pread_all(fd: int, offset: int, nbytes: int) -> bytes:
    data = os.pread(fd, nbytes, offset)
    while len(data) < nbytes:
        more = os.pread(fd, nbytes - len(data), offset + len(data))
        if not more:
            raise OSError(f"source file ends before byte {offset + nbytes}")
        data += more
    return data


class ShardedSafetensorsWriter:
    """Open all planned shard files; ``put(name, tensor)`` or ``copy(name, file pieces)`` writes one tensor;
    ``close()`` checks completeness, fsyncs and writes ``model.safetensors.index.json``."""

    def __init__(self, out_dir: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, max_bytes: int):
        if sys.byteorder != "little":
            raise RuntimeError("safetensors output needs a little-endian machine")
        self.out_dir, self.dtype = Path(out_dir), dtype
        self.kernel_copy = hasattr(os, "copy_file_range")  # Linux; elsewhere ``copy`` goes through memory
        self.sources: dict[Path, int] = {}  # source files of ``copy``, open until close/abort
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
        """Write tensor ``name`` (cast to the output dtype) from memory."""
        fd, offset, _ = self._slot(name)
        if tuple(t.shape) != self.where[name].entries[name][0]:
            raise ValueError(f"{name}: shape {tuple(t.shape)}, planned {self.where[name].entries[name][0]}")
        t = t.detach().to(self.dtype).contiguous()
        raw = memoryview(t.view(torch.uint8).reshape(-1).numpy()) if t.numel() else memoryview(b"")
        _pwrite_all(fd, raw, offset)
        self.pending.discard(name)

    def copy(self, name: str, pieces: list[tuple[Path, int, int]]) -> None:
        """Write tensor ``name`` from bytes already in the output dtype in source files: ``pieces`` ``(file,
        offset, count)`` concatenated in order. The kernel copies them file to file (``os.copy_file_range``: one
        copy, no user memory); where it cannot (another file system, an old kernel) they go through memory."""
        fd, offset, nbytes = self._slot(name)
        if sum(n for _, _, n in pieces) != nbytes:
            raise ValueError(f"{name}: the source pieces hold {sum(n for _, _, n in pieces)} bytes, planned {nbytes}")
        for path, start, n in pieces:
            if path not in self.sources:
                self.sources[path] = os.open(path, os.O_RDONLY)
            self.kernel_copy = self.kernel_copy and _copy_range(self.sources[path], start, fd, offset, n)
            if not self.kernel_copy:
                _pwrite_all(fd, memoryview(_pread_all(self.sources[path], start, n)), offset)
            offset += n
        self.pending.discard(name)

    def _slot(self, name: str) -> tuple[int, int, int]:
        """(shard fd, byte offset in the shard, byte count) of a tensor not yet written."""
        if name not in self.pending:
            raise ValueError(f"{name}: not planned or written twice")
        shard = self.where[name]
        _, start, end = shard.entries[name]
        return self.fds[shard.file], self.data_start[shard.file] + start, end - start

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
        for fd in [*self.fds.values(), *self.sources.values()]:
            os.close(fd)
        self.fds, self.sources = {}, {}
