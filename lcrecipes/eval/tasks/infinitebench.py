"""InfiniteBench's English book tasks (out-of-domain): longbook_choice_eng (accuracy), longbook_qa_eng (SubEM),
longbook_sum_eng (ROUGE-L).

Files: ``longbook_{choice,qa,sum}_eng.jsonl``. A record: ``id`` (int), ``context`` (the book), ``input`` (the
question; empty for the summary task), ``answer`` (list of str; for the choice task the text of the correct
option(s)), ``options`` (list of str; four for the choice task, empty otherwise). The book is cut into passages
of ``chunk_words`` words (task option, default 1500 ≈ 2K tokens) so the strategies' ``[DOC i]`` format applies.
"""

from __future__ import annotations

from lcrecipes.data.example import RetrievalExample
from lcrecipes.eval.tasks.base import EvalItem, Task, Where, chunk_words, letters, need, need_str_list, register

SUMMARY_QUESTION = "Summarize the book."


class InfiniteBenchBook(Task):
    def fields(self, record: dict, where: Where) -> tuple[str, str, list[str]]:
        need(record, "id", (int, str), where)
        context = need(record, "context", str, where)
        question = need(record, "input", str, where)
        answers = need_str_list(record, "answer", where, allow_str=True)
        if not answers:
            raise where.error("answer", "empty")
        return context, question, answers

    def item(self, record: dict, where: Where, question: str, answers: list[str], **kw) -> EvalItem:
        docs = chunk_words(record["context"], int(self.options.get("chunk_words", 1500)))
        qid = str(record["id"])
        ex = RetrievalExample(qid=qid, question=question, answers=answers, docs=docs, gold=[], domain=self.domain, **kw)
        return EvalItem(task=self.name, uid=qid, example=ex, reference=answers)


@register
class LongbookChoiceEng(InfiniteBenchBook):
    name = "infbench_longbook_choice_eng"
    metric = "accuracy"
    max_new_tokens = 40

    def convert(self, record: dict, where: Where) -> EvalItem:
        _, question, answers = self.fields(record, where)
        options = need_str_list(record, "options", where)
        if len(options) < 2:
            raise where.error("options", f"a choice task needs 2+ options, got {len(options)}")
        keys = []
        for a in answers:
            if a not in options:
                raise where.error("answer", f"{a!r} is not one of the options")
            keys.append(letters(len(options))[options.index(a)])
        return self.item(record, where, question, keys, choices=options)


@register
class LongbookQAEng(InfiniteBenchBook):
    name = "infbench_longbook_qa_eng"
    metric = "subem"
    max_new_tokens = 40

    def convert(self, record: dict, where: Where) -> EvalItem:
        _, question, answers = self.fields(record, where)
        return self.item(record, where, question, answers)


@register
class LongbookSumEng(InfiniteBenchBook):
    name = "infbench_longbook_sum_eng"
    metric = "rouge_l"
    max_new_tokens = 1200

    def convert(self, record: dict, where: Where) -> EvalItem:
        _, question, answers = self.fields(record, where)
        return self.item(record, where, question or SUMMARY_QUESTION, answers)
