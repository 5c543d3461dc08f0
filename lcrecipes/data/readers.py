"""Streamed record readers: JSONL, JSON (top-level array), parquet and `datasets` save_to_disk directories.

``read_records(path, bad)`` yields ``(Location, dict)`` one record at a time; nothing holds the whole file.
Per-record problems (malformed JSON line, bad UTF-8, not an object) go through ``bad`` (raise or count). A JSON
array that is malformed cannot be resynchronised, so that is always an error naming file and line.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from lcrecipes.data.errors import BadRecords, DataError, Location

Records = Iterator[tuple[Location, dict]]
READERS: dict[str, Callable[[Path, BadRecords], Records]] = {}
_WS = re.compile(r"\s*")
SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


def register(name: str):
    def deco(fn):
        READERS[name] = fn
        return fn

    return deco


def input_format(path: str | Path) -> str:
    """Reader key for ``path``: a directory is a `datasets` dir, files go by suffix."""
    path = Path(path)
    if path.is_dir():
        return "datasets"
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{path}: unknown input format {path.suffix!r}; expected {', '.join(SUFFIXES)} "
            "or a datasets save_to_disk directory"
        )
    return fmt


def read_records(path: str | Path, bad: BadRecords) -> Records:
    """Yield ``(location, record)`` from any supported input; raises FileNotFoundError naming the path."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: input does not exist")
    return READERS[input_format(path)](path, bad)


def _as_object(loc: Location, obj) -> dict:
    if not isinstance(obj, dict):
        raise DataError(loc, "wrong_type", f"expected a JSON object, got {type(obj).__name__}")
    return obj


@register("jsonl")
def read_jsonl(path: Path, bad: BadRecords) -> Records:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            loc = Location(str(path), lineno)
            try:
                text = raw.decode("utf-8")
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(loc, "malformed_json", f"malformed JSON ({e.msg}, column {e.colno})") from e
                except (ValueError, RecursionError) as e:  # an integer of > 4300 digits, nesting too deep
                    raise DataError(loc, "malformed_json", f"malformed JSON ({type(e).__name__}: {e})") from e
                yield loc, _as_object(loc, obj)
            except UnicodeDecodeError as e:
                bad.handle(DataError(loc, "bad_utf8", f"not UTF-8 (byte {e.start})"))
            except DataError as e:
                bad.handle(e)


class _JsonArrayStream:
    """Incremental parser of ``[obj, obj, ...]``: buffers one element (plus one read chunk) at a time."""

    def __init__(self, f, path: Path, chunk: int = 1 << 20):
        self.f, self.path, self.chunk = f, str(path), chunk
        self.udec = codecs.getincrementaldecoder("utf-8")("strict")
        self.dec = json.JSONDecoder()
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False

    def _fill(self) -> bool:
        if self.eof:
            return False
        raw = self.f.read(self.chunk)
        self.eof = not raw
        try:
            text = self.udec.decode(raw, final=self.eof)
        except UnicodeDecodeError as e:
            at = self.line + self.buf.count("\n", self.pos) + raw[: e.start].count(b"\n")
            raise DataError(Location(self.path, at), "bad_utf8", "not UTF-8") from e
        self.buf = self.buf[self.pos :] + text
        self.pos = 0
        return bool(raw)

    def _advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def _peek(self) -> str:
        """Next non-whitespace character ('' at end of input), consuming the whitespace."""
        while True:
            self._advance(_WS.match(self.buf, self.pos).end())
            if self.pos < len(self.buf) or not self._fill():
                return self.buf[self.pos : self.pos + 1]

    def _fail(self, message: str) -> DataError:
        return DataError(Location(self.path, self.line), "malformed_json", message)

    def _element(self):
        while True:
            try:
                obj, end = self.dec.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:
                    return obj, end
            except json.JSONDecodeError as e:
                if self.eof:
                    at = self.line + self.buf.count("\n", self.pos, e.pos)
                    raise self._fail(f"malformed JSON element ({e.msg} at line {at})") from e
            except (ValueError, RecursionError) as e:  # an integer of > 4300 digits, nesting too deep
                raise self._fail(f"malformed JSON element ({type(e).__name__}: {e})") from e
            self._fill()

    def __iter__(self) -> Iterator[tuple[Location, object]]:
        if self._peek() != "[":
            raise self._fail("expected a JSON array ('[')")
        self._advance(self.pos + 1)
        if self._peek() == "]":
            self._advance(self.pos + 1)
            if self._peek() != "":
                raise self._fail("unexpected data after the closing ']'")
            return
        while True:
            if self._peek() in ("]", ""):
                raise self._fail("expected an array element")
            loc = Location(self.path, self.line)
            obj, end = self._element()
            self._advance(end)
            yield loc, obj
            sep = self._peek()
            if sep == "]":
                self._advance(self.pos + 1)
                if self._peek() != "":
                    raise self._fail("unexpected data after the closing ']'")
                return
            if sep != ",":
                raise self._fail(f"expected ',' or ']' after an array element, got {sep!r}")
            self._advance(self.pos + 1)


@register("json")
def read_json(path: Path, bad: BadRecords) -> Records:
    with open(path, "rb") as f:
        for loc, obj in _JsonArrayStream(f, path):
            try:
                yield loc, _as_object(loc, obj)
            except DataError as e:
                bad.handle(e)


@register("parquet")
def read_parquet(path: Path, bad: BadRecords, batch_rows: int = 1024) -> Records:
    """Rows of a parquet file; a file pyarrow cannot read (not parquet, truncated, corrupt pages) is a DataError
    naming the file and the first row not read (it cannot be skipped record by record)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
        for batch in batches:
            for rec in batch.to_pylist():
                row += 1
                yield Location(str(path), row, "row"), rec
    except (pa.ArrowException, OSError) as e:
        where = Location(str(path), row + 1, "row") if row else str(path)
        raise DataError(where, "unreadable_file", f"not a readable parquet file ({type(e).__name__}: {e})") from e


@register("datasets")
def read_datasets_dir(path: Path, bad: BadRecords, batch_rows: int = 1024) -> Records:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        raise ValueError(f"{path}: is a DatasetDict with splits {list(ds)}; point to one split's directory")
    row = 0
    for batch in ds.iter(batch_size=batch_rows):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            row += 1
            yield Location(str(path), row, "row"), dict(zip(keys, values))
