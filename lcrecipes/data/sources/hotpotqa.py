"""HotpotQA distractor format: ``_id, question, answer, supporting_facts [[title, sent_idx], ...],
context [[title, [sentences]], ...]``, in any reader format (the official files are one JSON array).

Gold passages are the context paragraphs named by ``supporting_facts`` (in that order); the other paragraphs are
distractors (hard negatives carried by the record). Passage ids are the paragraph titles, stable across questions
and matching a Wikipedia-title corpus. A supporting fact whose title or sentence is not in ``context`` is
``gold_missing``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lcrecipes.data.corpus import PassageStore, open_corpus
from lcrecipes.data.errors import BadRecords, DataError, Location, require
from lcrecipes.data.example import Passage
from lcrecipes.data.hashing import sha256_path
from lcrecipes.data.readers import read_records
from lcrecipes.data.record import QARecord
from lcrecipes.data.sources.base import Source


def join_sentences(sentences: list[str]) -> str:
    """Join sentences as written (HotpotQA keeps leading spaces), adding a space only where none is."""
    out = ""
    for s in sentences:
        if out and not out[-1].isspace() and s and not s[0].isspace():
            out += " "
        out += s
    return out.strip()


def _paragraphs(rec: dict, loc: Location) -> dict[str, list[str]]:
    paragraphs: dict[str, list[str]] = {}
    for j, item in enumerate(require(rec, "context", list, loc)):
        ok = isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str)
        if not ok or not isinstance(item[1], list) or not all(isinstance(s, str) for s in item[1]):
            raise DataError(loc, "wrong_type", "expected [title, [sentences]]", field=f"context[{j}]")
        paragraphs.setdefault(item[0], item[1])
    return paragraphs


def _supporting(rec: dict, loc: Location, paragraphs: dict[str, list[str]]) -> dict[str, list[str]]:
    """Title -> supporting sentences (stripped), titles in first-mention order."""
    out: dict[str, list[str]] = {}
    for k, fact in enumerate(require(rec, "supporting_facts", list, loc)):
        key = f"supporting_facts[{k}]"
        if not (
            isinstance(fact, list | tuple) and len(fact) == 2 and isinstance(fact[0], str) and isinstance(fact[1], int)
        ):
            raise DataError(loc, "wrong_type", "expected [title, sentence_index]", field=key)
        title, idx = fact
        if title not in paragraphs:
            raise DataError(loc, "gold_missing", f"gold passage {title!r} is not in context", field=key)
        if not 0 <= idx < len(paragraphs[title]):
            raise DataError(loc, "gold_missing", f"sentence {idx} of {title!r} is not in context", field=key)
        out.setdefault(title, []).append(paragraphs[title][idx].strip())
    return out


def parse_hotpotqa(rec: dict, loc: Location) -> QARecord:
    """One HotpotQA record as a QARecord, else a DataError naming the field."""
    qid = str(require(rec, "_id", (str, int), loc))
    question = require(rec, "question", str, loc)
    answer = require(rec, "answer", str, loc)
    paragraphs = _paragraphs(rec, loc)
    support = _supporting(rec, loc, paragraphs)
    passages = {t: Passage(pid=t, title=t, text=join_sentences(s)) for t, s in paragraphs.items()}
    for title in support:
        if not passages[title].text:
            raise DataError(loc, "empty_text", f"gold passage {title!r} has no text", field="context")
    return QARecord(
        qid=qid,
        question=question.strip(),
        answers=[answer.strip()],
        gold=[passages[t] for t in support],
        supporting={t: s for t, s in support.items()},
        distractors=[p for t, p in passages.items() if t not in support and p.text],
    )


class HotpotQA(Source):
    name = "hotpotqa"

    def parse(self, rec: dict, loc: Location) -> QARecord:
        return parse_hotpotqa(rec, loc)

    def _valid(self, path: str, bad: BadRecords) -> Iterator[QARecord]:
        seen: set[str] = set()
        for loc, rec in read_records(path, bad):
            try:
                r = self.parse(rec, loc)
                if r.qid in seen:
                    raise DataError(loc, "duplicate_id", f"question id {r.qid!r} already used", field="_id")
            except DataError as e:
                bad.handle(e)
                continue
            seen.add(r.qid)
            yield r

    def records(self, split: str, bad: BadRecords) -> Iterator[QARecord]:
        cfg = self.cfg
        own_file = split == "eval" and cfg.eval_path
        path = cfg.eval_path if own_file else cfg.train_path
        held_out = 0 if own_file or split == "eval" or cfg.eval_path else max(cfg.num_eval, 0)
        n = self.limit(split)
        for i, r in enumerate(self._valid(path, bad)):
            if i >= held_out + n:
                return
            if i >= held_out:
                yield r

    def corpus(self, bad: BadRecords) -> PassageStore | None:
        if not self.cfg.corpus_path:
            return None
        return open_corpus(
            self.cfg.corpus_path, self.cache_dir, self.cfg.corpus_split_words, bad, self.input_hashes()["corpus"]
        )

    def lm_documents(self, split: str, bad: BadRecords) -> Iterator[tuple[str, str]]:
        """kind=lm: corpus passages as plain documents; the first ``num_eval`` are eval."""
        store = self.corpus(bad)
        start = 0 if split == "eval" else max(self.cfg.num_eval, 0)
        for i in range(start, min(len(store), start + self.limit(split))):
            p = store[i]
            yield p.pid, f"{p.title}\n{p.text}" if p.title else p.text

    def input_hashes(self) -> dict[str, str]:
        if not hasattr(self, "_hashes"):
            paths = {"train": self.cfg.train_path, "eval": self.cfg.eval_path, "corpus": self.cfg.corpus_path}
            self._hashes = {k: sha256_path(Path(v)) if v else "" for k, v in paths.items()}
        return self._hashes
