"""Bad input: one error type that names file, line and field, and a counter for ``on_bad_record=skip``."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Reasons a record can be bad (the manifest's ``skipped`` keys).
REASONS = (
    "malformed_json",
    "missing_field",
    "wrong_type",
    "empty_text",
    "bad_utf8",
    "duplicate_id",
    "gold_missing",
    "overlong",
    "unreadable_file",  # a whole input that cannot be parsed (a corrupt parquet file): always an error
)


@dataclass(frozen=True)
class Location:
    """Where a record came from: ``line`` is 1-based (a row number for parquet/datasets inputs)."""

    file: str
    line: int
    unit: str = "line"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.unit == "line" else f"{self.file} {self.unit} {self.line}"


class DataError(ValueError):
    """A bad input record; the message reads ``file:line: field 'x': what is wrong``."""

    def __init__(self, loc: Location | str, reason: str, message: str, field: str | None = None):
        assert reason in REASONS, reason
        self.loc, self.reason, self.field = loc, reason, field
        where = f"field {field!r}: " if field else ""
        super().__init__(f"{loc}: {where}{message} [{reason}]")


class BadRecords:
    """Applies ``on_bad_record``: ``error`` re-raises, ``skip`` counts per reason and logs the first few."""

    def __init__(self, mode: str = "error", log_first: int = 5):
        assert mode in ("error", "skip"), mode
        self.mode, self.log_first = mode, log_first
        self.counts: Counter[str] = Counter()

    def handle(self, err: DataError) -> None:
        """Raise ``err`` in error mode; otherwise count it."""
        if self.mode == "error":
            raise err
        self.counts[err.reason] += 1
        if sum(self.counts.values()) <= self.log_first:
            log.warning("skipping bad record: %s", err)

    def merge(self, other: BadRecords) -> None:
        self.counts.update(other.counts)

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def require(rec: dict, key: str, typ: type | tuple[type, ...], loc: Location, nonempty: bool = True):
    """``rec[key]`` checked for presence, type and (for str/list) non-emptiness, else a DataError."""
    if not isinstance(rec, dict):
        raise DataError(loc, "wrong_type", f"expected a JSON object, got {type(rec).__name__}")
    if key not in rec or rec[key] is None:
        raise DataError(loc, "missing_field", "missing", field=key)
    value = rec[key]
    if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
        names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise DataError(loc, "wrong_type", f"expected {names}, got {type(value).__name__}", field=key)
    if nonempty and isinstance(value, str | list) and not (value.strip() if isinstance(value, str) else value):
        raise DataError(loc, "empty_text", "empty", field=key)
    return value
