"""HELMET's RAG split (KILT): HotpotQA, NQ, TriviaQA, scored by SubEM (in-domain for the study).

Files: ``kilt/{hotpotqa-dev-multikilt_1000_k{k}_dep3, nq-dev-multikilt_1000_k{k}_dep6,
triviaqa-dev-multikilt_1000_k{k}_dep6}.jsonl`` with k = 20, 50, 105, 220, 440, 1000 passages for 4K … 128K tokens.
A record: ``question`` (str), ``answers`` (list of str), ``ctxs`` (list of ``{title, text}`` plus ``id`` and
``score`` for a retrieved passage, or ``psg_id`` for a gold one), ``positive_ctxs`` (gold passages, each with
``psg_id``), optional ``id``. Gold DOC ids are the ``ctxs`` whose ``psg_id`` is among ``positive_ctxs``; without
``positive_ctxs``, those with ``has_answer`` true.
"""

from __future__ import annotations

import hashlib

from lcrecipes.data.example import Passage, RetrievalExample
from lcrecipes.eval.tasks.base import IN_DOMAIN, EvalItem, Task, Where, need, need_str_list, register

HELMET_K = {4096: 20, 8192: 50, 16384: 105, 32768: 220, 65536: 440, 131072: 1000}


class HelmetKilt(Task):
    domain = IN_DOMAIN
    metric = "subem"
    max_new_tokens = 20
    k_of_length = HELMET_K

    def convert(self, record: dict, where: Where) -> EvalItem:
        question = need(record, "question", str, where)
        answers = need_str_list(record, "answers", where, allow_str=True)
        ctxs = need(record, "ctxs", list, where)
        docs = [_passage(c, i, where) for i, c in enumerate(ctxs)]
        gold = _gold_ids(record, ctxs, where)
        qid = str(record.get("id") or hashlib.sha1(question.encode()).hexdigest()[:16])
        ex = RetrievalExample(qid=qid, question=question, answers=answers, docs=docs, gold=gold, domain=self.domain)
        return EvalItem(task=self.name, uid=qid, example=ex, reference=answers)


def _passage(ctx: object, i: int, where: Where) -> Passage:
    if not isinstance(ctx, dict):
        raise where.error(f"ctxs[{i}]", f"expected an object, got {type(ctx).__name__}")
    text = ctx.get("text")
    if not isinstance(text, str):
        raise where.error(f"ctxs[{i}].text", "missing" if text is None else f"expected str, got {type(text).__name__}")
    title = ctx.get("title") or ""
    if not isinstance(title, str):
        raise where.error(f"ctxs[{i}].title", f"expected str, got {type(title).__name__}")
    pid = ctx.get("psg_id") if ctx.get("psg_id") is not None else ctx.get("id", i)
    return Passage(pid=str(pid), title=title, text=text)


def _gold_ids(record: dict, ctxs: list[dict], where: Where) -> list[int]:
    """1-based DOC ids of the gold passages."""
    if "positive_ctxs" in record:
        pos = need(record, "positive_ctxs", list, where)
        wanted = {str(p.get("psg_id")) for p in pos if isinstance(p, dict) and p.get("psg_id") is not None}
        return [i for i, c in enumerate(ctxs, start=1) if c.get("psg_id") is not None and str(c["psg_id"]) in wanted]
    return [i for i, c in enumerate(ctxs, start=1) if c.get("has_answer") is True]


@register
class HelmetHotpotQA(HelmetKilt):
    name = "helmet_hotpotqa"


@register
class HelmetNQ(HelmetKilt):
    name = "helmet_nq"


@register
class HelmetTriviaQA(HelmetKilt):
    name = "helmet_triviaqa"
