"""Loong, financial reports (out-of-domain): multi-document questions scored 0–100 by an LLM judge.

File: Loong's ``loong.jsonl``. A record: ``id``, ``level`` (int), ``set`` (int), ``type`` (financial|paper|legal),
``language``, ``question``, ``instruction``, ``prompt_template``, ``doc`` (list of report names), ``answer`` (str,
or a JSON value), ``shuffle_doc`` (bool). The reports are read from ``doc_dir`` (task option, default
``<file dir>/doc``) as Loong lays them out: ``financial/*2024-<name>*.txt`` (any year for level 4); a record that
carries its documents inline as ``docs`` (one string of ``《name》`` sections, the HF re-upload) needs no doc_dir.
Only records whose ``type`` is the task option ``type`` (default ``financial``) are kept.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from lcrecipes.data.example import Passage, RetrievalExample
from lcrecipes.eval.tasks.base import EvalItem, Task, Where, need, need_str_list, register

SECTION_RE = re.compile(r"《([^》\n]+)》\n")


@register
class LoongFinance(Task):
    name = "loong_finance"
    metric = "judge"
    max_new_tokens = 512

    def load(self, path, length=None, limit=None):
        self._doc_dir = Path(self.options.get("doc_dir") or Path(path).parent / "doc")
        return super().load(path, length, limit)

    def convert(self, record: dict, where: Where) -> EvalItem:
        uid = str(need(record, "id", (str, int), where))
        level = need(record, "level", int, where)
        need(record, "type", str, where)
        question, instruction = need(record, "question", str, where), need(record, "instruction", str, where)
        names = need_str_list(record, "doc", where)
        answer = need(record, "answer", (str, list, dict, int, float), where)
        answer = answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)
        if isinstance(record.get("docs"), str):
            docs = _inline_docs(record["docs"])
        else:
            docs = [self._read_doc(name, level, where) for name in names]
        if record.get("shuffle_doc", True):
            random.Random(int(hashlib.sha1(uid.encode()).hexdigest()[:8], 16)).shuffle(docs)
        full_q = f"{instruction.strip()}\n\n{question.strip()}".strip()
        ex = RetrievalExample(qid=uid, question=full_q, answers=[answer], docs=docs, gold=[], domain=self.domain)
        meta = {"level": level, "set": record.get("set"), "type": record["type"]}
        return EvalItem(task=self.name, uid=uid, example=ex, reference=[answer], meta=meta)

    def _read_doc(self, name: str, level: int, where: Where) -> Passage:
        folder = self._doc_dir / "financial"
        pattern = f"*{name}*.txt" if level == 4 else f"*2024-{name}*.txt"
        hits = sorted(folder.glob(pattern))
        if not hits:
            raise where.error("doc", f"no report {pattern!r} under {folder}")
        return Passage(pid=hits[0].stem, title=name, text=hits[0].read_text(encoding="utf-8").strip())

    def keep(self, record: dict) -> bool:
        return record.get("type") == self.options.get("type", "financial")


def _inline_docs(text: str) -> list[Passage]:
    """Split ``《name》\\n…`` sections into passages (the HF re-upload keeps Loong's own headers)."""
    heads = list(SECTION_RE.finditer(text))
    if not heads:
        return [Passage(pid="doc0", title="", text=text.strip())]
    out = []
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        out.append(Passage(pid=f"doc{i}", title=m.group(1), text=text[m.end() : end].strip()))
    return out
