"""LongBench-v2 (out-of-domain): 503 four-way multiple-choice questions, accuracy with robust option extraction.

File: ``data.json`` (one JSON array) or the same records as JSON lines. A record: ``_id``, ``domain``,
``sub_domain``, ``difficulty`` (easy|hard), ``length`` (short|medium|long), ``question``, ``choice_A`` …
``choice_D``, ``answer`` (one of A–D), ``context``. Task options: ``chunk_words`` (default 1500), and
``domains`` / ``lengths`` / ``difficulties`` (lists) to keep a subset.
"""

from __future__ import annotations

from lcrecipes.data.example import RetrievalExample
from lcrecipes.eval.tasks.base import EvalItem, Task, Where, chunk_words, need, register

CHOICE_KEYS = ("choice_A", "choice_B", "choice_C", "choice_D")
META_KEYS = ("domain", "sub_domain", "difficulty", "length")


@register
class LongBenchV2(Task):
    name = "longbench_v2"
    metric = "accuracy"
    max_new_tokens = 128

    def convert(self, record: dict, where: Where) -> EvalItem:
        uid = need(record, "_id", str, where)
        question = need(record, "question", str, where)
        choices = [need(record, k, str, where) for k in CHOICE_KEYS]
        answer = need(record, "answer", str, where)
        if answer not in "ABCD" or len(answer) != 1:
            raise where.error("answer", f"expected one of A, B, C, D, got {answer!r}")
        context = need(record, "context", str, where)
        meta = {k: need(record, k, str, where) for k in META_KEYS}
        docs = chunk_words(context, int(self.options.get("chunk_words", 1500)))
        ex = RetrievalExample(
            qid=uid, question=question, answers=[answer], docs=docs, gold=[], choices=choices, domain=self.domain
        )
        return EvalItem(task=self.name, uid=uid, example=ex, reference=[answer], meta=meta)

    def load(self, path, length=None, limit=None):
        """Like :meth:`Task.load`, keeping only the ``domains`` / ``lengths`` / ``difficulties`` asked for."""
        keep = {k: set(self.options[f"{k}s"]) for k in ("domain", "length") if f"{k}s" in self.options}
        if "difficulties" in self.options:
            keep["difficulty"] = set(self.options["difficulties"])
        items = [it for it in super().load(path, length) if all(it.meta[k] in v for k, v in keep.items())]
        return items[:limit] if limit is not None else items
