"""The line grammar every strategy's output is written in (and parsed back from).

An output is a list of lines split on ``"\\n"`` only. Each line is one of:

* ``Answer: <text>``                  the answer (one line, whitespace collapsed); the **last** line of an output
* ``Documents: [DOC 3], [DOC 7]``     the cited DOC ids (``Documents: none`` for no document)
* ``Content:`` / ``Quotes:`` / ``Reasoning:``   a section header
* ``[DOC 3]``                         a tag alone on its line: opens a copied block in ``Content:``
* ``> <text>``                        a *data* line: copied or quoted text, always behind the ``> `` prefix

Passage text only ever appears behind ``> `` (or in the free reasoning block, which the answer line closes), so a
passage that contains ``Answer:``, ``[DOC 3]``, newlines or any unicode cannot be read as structure. Keywords are
matched case-insensitively and surrounding whitespace is ignored, so the parser tolerates extra whitespace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lcrecipes.data.example import DOC_TAG, DOC_TAG_RE

ANSWER, DOCUMENTS, SECTION, TAG, DATA, OTHER = "answer", "documents", "section", "tag", "data", "other"

_KEYWORD_RE = re.compile(r"(answer|documents|content|quotes|reasoning)\s*:(.*)\Z", re.IGNORECASE | re.DOTALL)
_TAG_LINE_RE = re.compile(r"\[DOC (\d+)\]\s*:?\Z")
_STRICT_IDS_RE = re.compile(r"\[DOC \d+\](?:\s*,\s*\[DOC \d+\])*\Z")
DATA_PREFIX = "> "
_MAX_ID_DIGITS = 9  # longer numbers are out of range anyway; int() of huge digit strings raises


@dataclass(frozen=True)
class Line:
    """One classified output line. ``value``: answer text, section name, DOC id or data text; ``ids`` for
    DOCUMENTS lines; ``ok`` is False when the line has the right keyword but a malformed value."""

    kind: str
    value: str | int | None = None
    ids: tuple[int, ...] = ()
    ok: bool = True


def classify(line: str) -> Line:
    """Classify one line (no ``"\\n"`` inside) of a model output."""
    s = line.strip()
    if s.startswith(">"):
        body = line.lstrip()
        return Line(DATA, body[2:] if body.startswith(DATA_PREFIX) else body[1:])
    m = _KEYWORD_RE.match(s)
    if m:
        key, rest = m.group(1).lower(), m.group(2).strip()
        if key == ANSWER:
            return Line(ANSWER, rest, ok=bool(rest))
        if key == DOCUMENTS:
            return _documents_line(rest)
        return Line(SECTION, key, ok=not rest)
    m = _TAG_LINE_RE.match(s)
    if m:
        return Line(TAG, doc_id(m.group(1)))
    return Line(OTHER, s)


def is_section(line: str, name: str) -> bool:
    """Whether ``line`` is exactly the section header ``<name>:`` (case and outer whitespace ignored)."""
    c = classify(line)
    return c.kind == SECTION and c.value == name and c.ok


def _documents_line(rest: str) -> Line:
    ids = tuple(doc_id(i) for i in DOC_TAG_RE.findall(rest))
    strict = rest.lower() == "none" or bool(_STRICT_IDS_RE.match(rest))
    return Line(DOCUMENTS, rest, ids=ids, ok=strict and len(set(ids)) == len(ids))


def doc_id(digits: str) -> int:
    """The DOC id written as ``digits``; absurdly long numbers map to ``10**_MAX_ID_DIGITS`` (out of range)."""
    return int(digits) if len(digits) <= _MAX_ID_DIGITS else 10**_MAX_ID_DIGITS


def split_lines(output: str, keep_blank: bool = False) -> list[str]:
    """The output's lines (split on ``"\\n"`` only), outer whitespace stripped, blank lines dropped unless kept."""
    lines = output.strip().split("\n")
    return lines if keep_blank else [ln for ln in lines if ln.strip()]


def take_answer(lines: list[str]) -> tuple[list[str], str | None, bool]:
    """Split off the answer: ``(lines before the last answer line, answer or None, well_formed)``.

    Well formed means exactly one answer line, the last line, with a non-empty answer. When the last line is not
    an answer, the last answer line anywhere is used (lenient, for eval of untrained models).
    """
    idx = [j for j, ln in enumerate(lines) if classify(ln).kind == ANSWER]
    if not idx:
        return lines, None, False
    last = classify(lines[idx[-1]])
    ok = idx[-1] == len(lines) - 1 and len(idx) == 1 and last.ok
    return lines[: idx[-1]], str(last.value), ok


def parse_documents(body: list[str]) -> tuple[list[int], bool]:
    """Ids of the first ``Documents:`` line of ``body``, and whether that line is the first, well formed and the
    only one."""
    docs = [(j, line) for j, line in enumerate(map(classify, body)) if line.kind == DOCUMENTS]
    if not docs:
        return [], False
    first_pos, first = docs[0]
    return list(first.ids), first_pos == 0 and first.ok and len(docs) == 1


def answer_line(answer: str) -> str:
    return f"Answer: {answer}"


def documents_line(ids: list[int]) -> str:
    return "Documents: " + (", ".join(DOC_TAG.format(i=i) for i in ids) if ids else "none")


def data_lines(text: str) -> list[str]:
    """``text`` behind the data prefix, one output line per ``"\\n"``-separated line of ``text``."""
    return [DATA_PREFIX + ln for ln in text.split("\n")]


def cited_ids(text: str) -> list[int]:
    """Unique ``[DOC i]`` ids of a free text, in order of first mention."""
    return list(dict.fromkeys(doc_id(i) for i in DOC_TAG_RE.findall(text)))


def neutralize_tags(text: str) -> str:
    """Rewrite every ``[DOC i]`` in copied text as ``DOC i`` so it cannot be read as a citation."""
    while True:
        new = DOC_TAG_RE.sub(r"DOC \1", text)
        if new == text:
            return text
        text = new
