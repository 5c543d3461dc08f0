"""Megatron ``dist_checkpointing`` ``torch_dist`` files, read and written from one process without a process group.

On disk: torch distributed-checkpoint (DCP) files ``__<rank>_<i>.distcp`` indexed by ``.metadata``, plus
``metadata.json`` and ``common.pt``. A tensor is stored as *chunks* (one per saving rank and, for per-layer
tensors, one per layer: Megatron saves ``decoder.layers.X [L, ...]`` layer by layer), each a ``torch.save`` zip
archive at a byte range of a ``.distcp`` file. The writer stores the same per-layer chunks, so a Megatron trainer
loading the result reads only its own layers.

Reading: a chunk's storage record is stored uncompressed, so its bytes can be used where they lie: ``byte_pieces``
says where (file, offset, count) the elements of a tensor are, ``map_rows`` memory-maps rows (copy-on-write,
nothing read until touched) and ``read_rows`` reads them straight into an output tensor. The tensor layout comes
from the archive's ``data.pkl``, parsed by an unpickler that admits nothing but torch's tensor-rebuild call.
Records that cannot be used that way (transforms, non-contiguous, big-endian) go through DCP's own loader
(``torch.load(weights_only=True)`` of the whole chunk, then a copy).
"""

from __future__ import annotations

import collections
import io
import math
import mmap
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.checkpoint import save as dcp_save
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan, SavePlan, TensorWriteData, WriteItem, WriteItemType
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list


class _Window(io.RawIOBase):
    """The byte range ``[start, start + length)`` of an open binary file, as a seekable stream (for ``zipfile``)."""

    def __init__(self, f, start: int, length: int) -> None:
        super().__init__()
        self.f, self.start, self.length, self.pos = f, start, length, 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: 0, 1: self.pos, 2: self.length}[whence] + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf) -> int:
        n = max(0, min(len(buf), self.length - self.pos))
        got = os.preadv(self.f.fileno(), [memoryview(buf)[:n]], self.start + self.pos)
        self.pos += got
        return got


class _TensorMeta:
    """What ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` would rebuild."""

    def __init__(self, storage, storage_offset, size, stride, *rest) -> None:
        self.key, self.storage_offset, self.size, self.stride = storage[0], storage_offset, tuple(size), tuple(stride)


class _MetaUnpickler(pickle.Unpickler):
    """Reads the ``data.pkl`` of a one-tensor ``torch.save`` archive into a ``_TensorMeta``; refuses any other
    global (so nothing but these three names can be called)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _TensorMeta
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name.endswith("Storage") and isinstance(getattr(torch, name, None), type):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a tensor record")

    def persistent_load(self, pid):
        return (pid[2], pid[1])  # (storage key, storage type)


@dataclass
class _Record:
    """A stored chunk's tensor: absolute byte offset of its first element and its element layout."""

    data_start: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def row_major(self) -> bool:
        want = tuple(math.prod(self.size[i + 1:]) for i in range(len(self.size)))
        return all(n == 1 or a == b for a, b, n in zip(self.stride, want, self.size))


def _parse_record(f, start: int, length: int, itemsize: int) -> _Record | None:
    """The layout of the ``torch.save`` archive at ``[start, start + length)`` of ``f``; None when it is not a
    plain, uncompressed, little-endian one-tensor archive."""
    try:
        zf = zipfile.ZipFile(_Window(f, start, length))
        pkl = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
        meta = _MetaUnpickler(io.BytesIO(zf.read(pkl))).load()
        prefix = pkl[: -len("data.pkl")]
        info = zf.getinfo(f"{prefix}data/{meta.key}")
        order = zf.read(f"{prefix}byteorder").decode() if f"{prefix}byteorder" in zf.namelist() else "little"
    except (StopIteration, KeyError, zipfile.BadZipFile, pickle.UnpicklingError, AttributeError, TypeError):
        return None
    if info.compress_type != zipfile.ZIP_STORED or order != "little" or not isinstance(meta, _TensorMeta):
        return None
    header = os.pread(f.fileno(), 30, start + info.header_offset)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    data = start + info.header_offset + 30 + name_len + extra_len + meta.storage_offset * itemsize
    return _Record(data, meta.size, meta.stride)


def _pread_into(fd: int, out: memoryview, offset: int, chunk: int = 16 << 20) -> None:
    done = 0
    while done < len(out):
        n = os.preadv(fd, [out[done:done + chunk]], offset + done)
        if n <= 0:
            raise OSError(f"unexpected end of file at byte {offset + done}")
        done += n


class _RegionPlanner(DefaultLoadPlanner):
    """Loads ``state_dict[key]`` (a buffer) from the region of stored tensor ``key`` starting at ``offsets[key]``."""

    def __init__(self, offsets: dict[str, tuple[int, ...]]) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.offsets = offsets

    def create_local_plan(self) -> LoadPlan:
        items = []
        for key, buf in self.state_dict.items():
            chunk = ChunkStorageMetadata(offsets=torch.Size(self.offsets[key]), sizes=buf.shape)
            items += create_read_items_for_chunk_list(key, self.metadata.state_dict_metadata[key], [chunk])
        return LoadPlan(items)

    def lookup_tensor(self, index: MetadataIndex) -> Tensor:
        return self.state_dict[index.fqn]


class TorchDistFiles:
    """The tensors of one ``torch_dist`` checkpoint directory: shapes, dtypes and row-range reads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.meta = FileSystemReader(str(self.path)).read_metadata()
        self.tensors = {k: v for k, v in self.meta.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
        self.storage: dict[str, dict[tuple, object]] = collections.defaultdict(dict)
        for index, info in self.meta.storage_data.items():
            if index.offset is not None:
                self.storage[index.fqn][tuple(index.offset)] = info
        self._records: dict[tuple, _Record | None] = {}

    def missing_files(self) -> list[Path]:
        names = sorted({info.relative_path for info in self.meta.storage_data.values()})
        return [self.path / n for n in names if not (self.path / n).is_file()]

    def short_files(self) -> list[tuple[Path, int, int]]:
        """``(file, size, bytes .metadata says it holds)`` for every present file shorter than its records."""
        need: dict[str, int] = collections.defaultdict(int)
        for info in self.meta.storage_data.values():
            need[info.relative_path] = max(need[info.relative_path], info.offset + info.length)
        sizes = {n: (self.path / n).stat().st_size for n in need if (self.path / n).is_file()}
        return [(self.path / n, sizes[n], need[n]) for n in sorted(sizes) if sizes[n] < need[n]]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].size)

    def dtype(self, key: str) -> torch.dtype:
        return self.tensors[key].properties.dtype

    def read_rows(self, keys: list[str], start: int = 0, stop: int | None = None,
                  out: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Rows ``[start, stop)`` (dim 0; all rows when ``stop`` is None) of each stored tensor in ``keys``, read
        into ``out``'s tensors when given (reusing buffers spares the page faults of fresh memory)."""
        out, slow = dict(out or {}), {}
        for key in keys:
            shape = self.shape(key)
            rows = (shape[0] if stop is None else stop) - start
            buf = out.get(key)
            if buf is None or tuple(buf.shape) != (rows, *shape[1:]) or buf.dtype != self.dtype(key):
                buf = torch.empty((rows, *shape[1:]), dtype=self.dtype(key))
            if not self._read_direct(key, buf, start):
                slow[key] = buf
            out[key] = buf
        if slow:
            offsets = {k: (start,) + (0,) * (v.dim() - 1) for k, v in slow.items()}
            dcp_load(slow, storage_reader=FileSystemReader(str(self.path)), planner=_RegionPlanner(offsets),
                     no_dist=True)
        return out

    def map_rows(self, keys: list[str], start: int = 0, stop: int | None = None) -> dict[str, Tensor]:
        """Like ``read_rows``, but a tensor whose rows lie in one plain chunk is a copy-on-write memory map of the
        file's bytes: nothing is read until a page is touched, and writing to it would change only this process's
        pages, never the file. The mapping lives as long as the tensor (or a view of it) does. Others are read."""
        out, rest = {}, []
        for key in keys:
            t = self._map(key, start, self.shape(key)[0] if stop is None else stop)
            if t is None:
                rest.append(key)
            else:
                out[key] = t
        return out | (self.read_rows(rest, start, stop) if rest else {})

    def byte_pieces(self, key: str, ranges: list[tuple[int, int]]) -> list[tuple[Path, int, int]] | None:
        """Where elements ``[a, b)`` (row-major over the whole tensor) of each range lie, in order: file pieces
        ``(file, byte offset, byte count)``, touching ones merged; None when a part is not stored plainly."""
        shape, itemsize = self.shape(key), self.dtype(key).itemsize
        inner, pieces = math.prod(shape[1:]), []
        chunks = sorted(self.tensors[key].chunks, key=lambda c: c.offsets[0])
        for a, b in ranges:
            covered = 0
            for c in chunks:
                lo, hi = max(a, c.offsets[0] * inner), min(b, (c.offsets[0] + c.sizes[0]) * inner)
                if lo >= hi:
                    continue
                plain = self._plain(key, c, itemsize)
                if plain is None:
                    return None
                path, data = plain
                at, n = data + (lo - c.offsets[0] * inner) * itemsize, (hi - lo) * itemsize
                if pieces and pieces[-1][0] == path and pieces[-1][1] + pieces[-1][2] == at:
                    pieces[-1] = (path, pieces[-1][1], pieces[-1][2] + n)
                else:
                    pieces.append((path, at, n))
                covered += hi - lo
            if covered != b - a:
                return None
        return pieces

    def _plain(self, key: str, chunk, itemsize: int) -> tuple[Path, int] | None:
        """``(file, byte offset of the first element)`` of a chunk stored as plain row-major bytes spanning whole
        rows, present in full on disk; None otherwise (transforms, compression, a truncated file ...)."""
        off, size = tuple(chunk.offsets), tuple(chunk.sizes)
        info = self.storage[key][off]
        if size[1:] != self.shape(key)[1:] or info.transform_descriptors:
            return None
        path = self.path / info.relative_path
        with open(path, "rb") as f:
            rec = self._record(f, key, off, info, itemsize)
            if rec is None or rec.size != size or not rec.row_major():
                return None
            end = rec.data_start + math.prod(size) * itemsize
            if end > min(os.fstat(f.fileno()).st_size, info.offset + info.length):
                return None  # truncated: the read path names it (a memory map would crash on the missing pages)
        return path, rec.data_start

    def _map(self, key: str, start: int, stop: int) -> Tensor | None:
        shape, dtype = self.shape(key), self.dtype(key)
        row = math.prod(shape[1:])
        pieces = self.byte_pieces(key, [(start * row, stop * row)]) if stop > start and row else None
        if not pieces or len(pieces) != 1:
            return None
        (path, begin, nbytes), granule = pieces[0], mmap.ALLOCATIONGRANULARITY
        with open(path, "rb") as f:
            m = mmap.mmap(f.fileno(), begin % granule + nbytes, access=mmap.ACCESS_COPY, offset=begin - begin % granule)
        t = torch.frombuffer(m, dtype=dtype, count=nbytes // dtype.itemsize, offset=begin % granule)
        return t.view(stop - start, *shape[1:])

    def _record(self, f, key: str, off: tuple, info, itemsize: int) -> _Record | None:
        if (key, off) not in self._records:
            self._records[key, off] = _parse_record(f, info.offset, info.length, itemsize)
        return self._records[key, off]

    def _read_direct(self, key: str, buf: Tensor, start: int) -> bool:
        """Fill ``buf`` (rows ``start`` onwards of ``key``) from the chunks' bytes; False if a chunk needs DCP."""
        itemsize = buf.element_size()
        for chunk in self.tensors[key].chunks:
            off, size = tuple(chunk.offsets), tuple(chunk.sizes)
            lo, hi = max(start, off[0]), min(start + buf.shape[0], off[0] + size[0])
            if lo >= hi:
                continue
            info = self.storage[key][off]
            if info.transform_descriptors:
                return False
            with open(self.path / info.relative_path, "rb") as f:
                rec = self._record(f, key, off, info, itemsize)
                if rec is None or rec.size != size or not rec.row_major():
                    return False
                row = math.prod(size[1:])
                dst = buf[(slice(lo - start, hi - start), *(slice(o, o + n) for o, n in zip(off[1:], size[1:])))]
                part = dst if dst.is_contiguous() else torch.empty(dst.shape, dtype=dst.dtype)
                if part.numel():
                    raw = memoryview(part.view(torch.uint8).reshape(-1).numpy())
                    _pread_into(f.fileno(), raw, rec.data_start + (lo - off[0]) * row * itemsize)
                if part is not dst:
                    dst.copy_(part)
        return True


class _ChunkSavePlanner(DefaultSavePlanner):
    """Saves every ``chunks[key][offsets]`` tensor as one chunk of the global tensor ``key`` of ``shapes[key]``,
    and every ``objects[key]`` as a ``torch.save``d byte record (how Megatron stores ``ShardedObject``s)."""

    def __init__(self, chunks: dict[str, dict[tuple, Tensor]], shapes: dict[str, tuple], objects: dict[str, Any]):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.chunks, self.shapes, self.objects = chunks, shapes, objects

    def create_local_plan(self) -> SavePlan:
        items = [WriteItem(index=MetadataIndex(key), type=WriteItemType.BYTE_IO) for key in self.objects]
        for key, parts in self.chunks.items():
            for off, t in parts.items():
                data = TensorWriteData(chunk=ChunkStorageMetadata(torch.Size(off), t.shape),
                                       properties=TensorProperties.create_from_tensor(t),
                                       size=torch.Size(self.shapes[key]))
                items.append(WriteItem(index=MetadataIndex(key, torch.Size(off)), type=WriteItemType.SHARD,
                                       tensor_data=data))
        self.plan = SavePlan(items)
        return self.plan

    def resolve_data(self, write_item: WriteItem) -> Tensor | io.BytesIO:
        index = write_item.index
        if write_item.type == WriteItemType.BYTE_IO:
            buf = io.BytesIO()
            torch.save(self.objects[index.fqn], buf)
            buf.seek(0)
            return buf
        return self.chunks[index.fqn][tuple(index.offset)]


def save_torch_dist(chunks: dict[str, dict[tuple, Tensor]], shapes: dict[str, tuple], objects: dict[str, Any],
                    out_dir: Path) -> None:
    """Write a ``torch_dist`` checkpoint: tensor ``key`` of global shape ``shapes[key]`` from its chunks
    ``{offsets: tensor}``, objects as byte records, then ``common.pt`` and ``metadata.json``."""
    from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config

    dcp_save({}, storage_writer=FileSystemWriter(str(out_dir), thread_count=1),
             planner=_ChunkSavePlanner(chunks, shapes, objects), no_dist=True)
    torch.save({}, os.path.join(out_dir, "common.pt"))
    save_config(CheckpointingConfig("torch_dist"), str(out_dir))
