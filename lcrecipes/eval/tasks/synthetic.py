"""The synthetic domains from data prep: JSON lines of ``RetrievalExample.to_json()`` at any length.

``synthetic_in_domain`` (SubEM; the training domain at the lengths the suite names), ``synthetic_ood_qa``
(SubEM; e.g. finance filings) and ``synthetic_ood_mc`` (accuracy; records carry ``choices`` and the answer
letter(s) in ``answers``). Records are checked field by field before they are built.
"""

from __future__ import annotations

from lcrecipes.data.example import RetrievalExample
from lcrecipes.eval.tasks.base import IN_DOMAIN, OUT_OF_DOMAIN, EvalItem, Task, Where, need, need_str_list, register


class SyntheticTask(Task):
    needs_choices = False

    def convert(self, record: dict, where: Where) -> EvalItem:
        qid = need(record, "qid", str, where)
        need(record, "question", str, where)
        answers = need_str_list(record, "answers", where)
        for i, d in enumerate(need(record, "docs", list, where)):
            if not isinstance(d, dict):
                raise where.error(f"docs[{i}]", f"expected an object, got {type(d).__name__}")
            for k in ("pid", "title", "text"):
                if not isinstance(d.get(k), str):
                    raise where.error(f"docs[{i}].{k}", "missing" if k not in d else "expected str")
        gold = need(record, "gold", list, where)
        if any(not isinstance(g, int) or not 1 <= g <= len(record["docs"]) for g in gold):
            raise where.error("gold", f"DOC ids must be ints in 1..{len(record['docs'])}, got {gold}")
        if self.needs_choices and not record.get("choices"):
            raise where.error("choices", "a multiple-choice task needs a non-empty list of choices")
        if "choices" in record and record["choices"] is not None:
            need_str_list(record, "choices", where)
        unknown = sorted(set(record) - set(RetrievalExample.__dataclass_fields__))
        if unknown:
            raise where.error(unknown[0], "not a RetrievalExample field")
        ex = RetrievalExample.from_json(record)
        ex.domain = self.domain
        return EvalItem(task=self.name, uid=qid, example=ex, reference=answers)


@register
class SyntheticInDomain(SyntheticTask):
    name = "synthetic_in_domain"
    domain = IN_DOMAIN
    metric = "subem"


@register
class SyntheticOodQA(SyntheticTask):
    name = "synthetic_ood_qa"
    domain = OUT_OF_DOMAIN
    metric = "subem"


@register
class SyntheticOodMC(SyntheticTask):
    name = "synthetic_ood_mc"
    domain = OUT_OF_DOMAIN
    metric = "accuracy"
    needs_choices = True
