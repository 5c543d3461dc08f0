"""Tiny HotpotQA / 2WikiMultihopQA-format question files and a passage corpus, invented from a seed (no
downloads), for tests and the data_prep demo.

Question ``q{k}`` asks for the home town of the founder of ``Org k``: gold paragraphs ``Org k`` (founder
sentence) and ``Person k`` (town sentence), two distractor paragraphs, and ``supporting_facts`` pointing at the
two sentences. The corpus holds filler passages plus, for question 0, a near-duplicate of its first gold
paragraph (to be promoted to gold) and an exact copy of its second (to be dropped).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = (
    "river stone market winter harbor garden council bridge festival railway museum valley orchard "
    "library tower mill quarry meadow castle chapel forest island lantern school theatre canal"
).split()
TOWNS = "Ashby Brigg Colne Dunmow Eyam Frome Goole Hythe Ilkley Jarrow".split()


def _filler(rng: random.Random, n: int) -> str:
    sents, words = [], [rng.choice(WORDS) for _ in range(n)]
    for a in range(0, n, 12):
        chunk = words[a : a + 12]
        sents.append(" ".join(chunk).capitalize() + ".")
    return " ".join(sents)


def _question(k: int, rng: random.Random) -> dict:
    town = TOWNS[k % len(TOWNS)]
    org = [f"Org {k} is a guild of makers.", f" It was founded by Person {k}.", " " + _filler(rng, 24)]
    person = [f"Person {k} was a carver.", f" Person {k} grew up in {town}.", " " + _filler(rng, 24)]
    distractors = [
        [f"Org {k + 100}", [f"Org {k + 100} is a guild of sailors.", " " + _filler(rng, 30)]],
        [f"Person {k + 100}", [f"Person {k + 100} grew up in {TOWNS[(k + 3) % 10]}."]],
    ]
    context = [[f"Org {k}", org], [f"Person {k}", person], *distractors]
    rng.shuffle(context)
    return {
        "_id": f"q{k}",
        "question": f"In which town did the founder of Org {k} grow up?",
        "answer": town,
        "type": "bridge",
        "supporting_facts": [[f"Org {k}", 1], [f"Person {k}", 1]],
        "context": context,
    }


def hotpotqa_records(n: int, seed: int = 0, twowiki: bool = False) -> list[dict]:
    rng = random.Random(seed)
    recs = [_question(k, rng) for k in range(n)]
    if twowiki:
        for k, r in enumerate(recs):
            r["evidences"] = [
                [f"Org {k}", "founded by", f"Person {k}"],
                [f"Person {k}", "home town", TOWNS[k % len(TOWNS)]],
            ]
    return recs


def corpus_records(n: int, questions: list[dict], seed: int = 0, words: int = 80) -> list[dict]:
    """``n`` filler passages plus the near-duplicate / exact copy of question 0's gold paragraphs."""
    rng = random.Random(seed + 1)
    rows = [{"id": f"c{i}", "title": f"Topic {i}", "text": _filler(rng, words)} for i in range(n)]
    if questions:
        ctx = dict((t, s) for t, s in questions[0]["context"])
        org = "".join(ctx["Org 0"]).replace("makers", "craft makers")
        rows.append({"id": "near0", "title": "Org 0 (guild)", "text": org.strip()})
        rows.append({"id": "copy0", "title": "Person 0", "text": "".join(ctx["Person 0"]).strip()})
    return rows


def write_hotpotqa_fixture(
    root: str | Path,
    n_questions: int = 6,
    n_corpus: int = 200,
    seed: int = 0,
    twowiki: bool = False,
    corpus_words: int = 80,
) -> dict[str, Path]:
    """Write ``questions.json`` (one JSON array, like the official files) and ``corpus.jsonl``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    qs = hotpotqa_records(n_questions, seed, twowiki)
    (root / "questions.json").write_text(json.dumps(qs, indent=1))
    with open(root / "corpus.jsonl", "w") as f:
        for row in corpus_records(n_corpus, qs, seed, corpus_words):
            f.write(json.dumps(row) + "\n")
    return {"train_path": root / "questions.json", "corpus_path": root / "corpus.jsonl"}
