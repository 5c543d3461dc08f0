"""2WikiMultihopQA: the HotpotQA layout plus ``evidences`` ([subject, relation, object] triples), which become
the example's ``reasoning`` chain (used by the reasoning strategy). ``type`` is kept out of the example."""

from __future__ import annotations

from lcrecipes.data.errors import DataError, Location
from lcrecipes.data.record import GOLD_REF, QARecord
from lcrecipes.data.sources.hotpotqa import HotpotQA, parse_hotpotqa


def evidence_chain(evidences: list, loc: Location, gold_titles: list[str]) -> str | None:
    """``[[s, r, o], ...]`` -> ``"According to [GOLD k], the r of s is o. ..."`` (citing the gold passage titled
    ``s`` when there is one); None when there are no evidences."""
    steps = []
    for k, ev in enumerate(evidences):
        if not (isinstance(ev, list | tuple) and len(ev) == 3 and all(isinstance(x, str) for x in ev)):
            raise DataError(loc, "wrong_type", "expected [subject, relation, object]", field=f"evidences[{k}]")
        s, r, o = (x.strip() for x in ev)
        cite = f"According to {GOLD_REF.format(k=gold_titles.index(s))}, the" if s in gold_titles else "The"
        steps.append(f"{cite} {r} of {s} is {o}.")
    return " ".join(steps) or None


class TwoWiki(HotpotQA):
    name = "2wiki"

    def parse(self, rec: dict, loc: Location) -> QARecord:
        r = parse_hotpotqa(rec, loc)
        evidences = rec.get("evidences") or []
        if not isinstance(evidences, list):
            raise DataError(loc, "wrong_type", f"expected list, got {type(evidences).__name__}", field="evidences")
        r.reasoning = evidence_chain(evidences, loc, [p.title for p in r.gold])
        return r
