"""The task plugin: a loader for one benchmark's published file format, its metric, and the registry.

A task reads its file (JSON lines, or a JSON array) record by record and turns each record into a
:class:`RetrievalExample` (passages = the benchmark's documents, or chunks of its one long context), so every
strategy can prompt it in its own output format. A record that does not match the published schema raises
:class:`SchemaError` naming the file, the line (1-based; ``file:[i]`` for record i of a JSON array) and the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lcrecipes.data.example import Passage, RetrievalExample

IN_DOMAIN = "in_domain"
OUT_OF_DOMAIN = "out_of_domain"


class SchemaError(ValueError):
    """A benchmark record that does not match its published schema."""


@dataclass(frozen=True)
class Where:
    """Where a record came from, for error messages."""

    file: Path
    line: int  # 1-based line of a JSON-lines file, or 0-based index in a JSON array
    in_array: bool = False

    def __str__(self) -> str:
        return f"{self.file}:[{self.line}]" if self.in_array else f"{self.file}:{self.line}"

    def error(self, fld: str, msg: str) -> SchemaError:
        return SchemaError(f"{self}: field '{fld}': {msg}")


@dataclass
class EvalItem:
    """One example of one task at one nominal length. ``reference`` is what the metric compares against."""

    task: str
    uid: str
    example: RetrievalExample
    length: int | None = None
    reference: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base class: fill :meth:`convert`; set ``name``, ``domain``, ``metric`` and optionally the rest.

    ``metric`` is a key of :data:`lcrecipes.eval.metrics.METRICS`. ``k_of_length`` maps a nominal length (tokens)
    to the task's file key (the ``{k}`` placeholder of a suite path).
    """

    name: ClassVar[str]
    domain: ClassVar[str] = OUT_OF_DOMAIN
    metric: ClassVar[str] = "subem"
    max_new_tokens: ClassVar[int | None] = None
    k_of_length: ClassVar[dict[int, int]] = {}

    def __init__(self, **options: Any) -> None:
        self.options = options

    def convert(self, record: dict, where: Where) -> EvalItem:
        raise NotImplementedError

    def keep(self, record: dict) -> bool:
        """Whether a record belongs to this task (a file may hold several, e.g. Loong's domains)."""
        return True

    def load(self, path: str | Path, length: int | None = None, limit: int | None = None) -> list[EvalItem]:
        """Items of ``path`` in file order, the first ``limit`` of them."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{self.name}: no such file {path}")
        items = []
        for where, record in iter_records(path):
            if limit is not None and len(items) >= limit:
                break
            if not self.keep(record):
                continue
            item = self.convert(record, where)
            item.length = length
            items.append(item)
        return items


TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    if cls.name in TASKS:
        raise ValueError(f"task {cls.name!r} registered twice")
    TASKS[cls.name] = cls
    return cls


def get_task(name: str, **options: Any) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name](**options)


def iter_records(path: Path) -> Iterator[tuple[Where, dict]]:
    """``(where, record)`` for a JSON-lines file, or a file holding one JSON array (LongBench-v2's data.json)."""
    with path.open(encoding="utf-8") as fh:
        head = fh.read(1)
        while head and head.isspace():
            head = fh.read(1)
        fh.seek(0)
        if head == "[":
            yield from _array_records(path, fh.read())
            return
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SchemaError(f"{path}:{n}: not valid JSON: {e}") from e
            if not isinstance(record, dict):
                raise SchemaError(f"{path}:{n}: a record is a JSON object, got {type(record).__name__}")
            yield Where(path, n), record


def _array_records(path: Path, text: str) -> Iterator[tuple[Where, dict]]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise SchemaError(f"{path}:{e.lineno}: not valid JSON: {e}") from e
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise SchemaError(f"{path}:[{i}]: a record is a JSON object, got {type(record).__name__}")
        yield Where(path, i, in_array=True), record


def need(record: dict, fld: str, kind: type | tuple[type, ...], where: Where) -> Any:
    """``record[fld]``, checked to be of ``kind``."""
    if fld not in record:
        raise where.error(fld, f"missing (record has {sorted(record)})")
    value = record[fld]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise where.error(fld, f"expected {names}, got {type(value).__name__}")
    return value


def need_str_list(record: dict, fld: str, where: Where, allow_str: bool = False) -> list[str]:
    """A list of strings (a lone string too when ``allow_str``)."""
    value = need(record, fld, (list, str) if allow_str else list, where)
    if isinstance(value, str):
        return [value]
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise where.error(f"{fld}[{i}]", f"expected str, got {type(v).__name__}")
    return value


def chunk_words(text: str, words_per_chunk: int, prefix: str = "chunk") -> list[Passage]:
    """Cut one long context into passages of about ``words_per_chunk`` words, on paragraph breaks when possible.

    Passages keep the text verbatim (whitespace between paragraphs included) so quotes stay substrings.
    """
    pieces = re.split(r"(\n\s*\n)", text)
    chunks, cur, n = [], [], 0
    for piece in pieces:
        w = len(piece.split())
        if cur and n + w > words_per_chunk:
            chunks.append("".join(cur))
            cur, n = [], 0
        if w > words_per_chunk:
            chunks.extend(_split_long(piece, words_per_chunk))
            continue
        cur.append(piece)
        n += w
    if cur and "".join(cur).strip():
        chunks.append("".join(cur))
    return [Passage(pid=f"{prefix}{i}", title="", text=c.strip()) for i, c in enumerate(chunks) if c.strip()]


def _split_long(text: str, words_per_chunk: int) -> list[str]:
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    out = []
    for i in range(0, len(spans), words_per_chunk):
        group = spans[i : i + words_per_chunk]
        out.append(text[group[0][0] : group[-1][1]])
    return out


def letters(n: int) -> str:
    return "ABCDEFGHIJ"[:n]
