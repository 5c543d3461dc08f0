"""``QARecord``: a question as a source reads it, before its context is built (see builder.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lcrecipes.data.example import Passage

# In ``QARecord.reasoning``, ``[GOLD k]`` cites the k-th gold passage (0-based); the builder rewrites it as the
# passage's ``[DOC i]`` tag once the context is shuffled.
GOLD_REF = "[GOLD {k}]"
GOLD_REF_RE = re.compile(r"\[GOLD (\d+)\]")


@dataclass
class QARecord:
    """A question before its context is built. ``gold`` is in evidence order; ``supporting`` maps a gold
    passage's pid to its verbatim supporting sentences; ``distractors`` are negatives the record carries."""

    qid: str
    question: str
    answers: list[str]
    gold: list[Passage]
    supporting: dict[str, list[str]] = field(default_factory=dict)
    distractors: list[Passage] = field(default_factory=list)
    choices: list[str] | None = None
    reasoning: str | None = None
    domain: str = "in_domain"
