"""Question templates over the synthetic world: a string-keyed registry ``QUESTION_TYPES``.

Each type lists its instances (``keys(world)``) and builds a ``QARecord`` for one instance, with the verbatim
supporting sentences and hard-negative distractors of the same attribute types (other people's biographies,
other cities, the same company's other years and other companies' same year).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from lcrecipes.data.record import QARecord
from lcrecipes.data.synthetic.world import FILING_QUESTIONS, PERSON_QUESTIONS, World, article

N_DISTRACTORS = 6
LETTERS = "ABCD"


@dataclass(frozen=True)
class QuestionType:
    domain: str
    keys: Callable[[World], list]
    build: Callable[[World, object, random.Random], QARecord]


QUESTION_TYPES: dict[str, QuestionType] = {}


def question(name: str, domain: str, keys: Callable[[World], list]):
    def deco(fn):
        QUESTION_TYPES[name] = QuestionType(domain, keys, fn)
        return fn

    return deco


def _people(w: World) -> list:
    return sorted(w.people)


def _filings(w: World) -> list:
    return sorted(w.filings)


def _person_negatives(w: World, rng: random.Random, exclude: set[str]) -> list:
    """Biographies of people sharing a mentor with the excluded ones first, then random. (Not people sharing a
    birthplace: those would repeat the answer city of a birthplace question and let it be guessed by frequency.)"""
    close = sorted({n for r in sorted(exclude) for n in w.by_mentor[w.people[r].mentor]} - exclude)
    rng.shuffle(close)
    chosen = close[:N_DISTRACTORS]
    while len(chosen) < min(N_DISTRACTORS, len(w.people) - len(exclude)):
        n = rng.choice(w.names)
        if n not in exclude and n not in chosen:
            chosen.append(n)
    return [w.person_passage(n) for n in chosen]


def _record(
    key: str,
    question: str,
    answer: str,
    gold: list,
    facts: list[list[str]],
    negatives: list,
    domain: str = "in_domain",
    reasoning: str | None = None,
) -> QARecord:
    supporting = {p.pid: f for p, f in zip(gold, facts)}
    return QARecord(
        qid=key,
        question=question,
        answers=[answer],
        gold=gold,
        supporting=supporting,
        distractors=negatives,
        reasoning=reasoning,
        domain=domain,
    )


def _one_hop(kind: str, fact: str) -> Callable[[World, str, random.Random], QARecord]:
    """A question type asking ``PERSON_QUESTIONS[kind]`` of one person, supported by its ``fact`` sentence."""
    template, answer = PERSON_QUESTIONS[kind]

    def build(w: World, name: str, rng: random.Random) -> QARecord:
        p = w.people[name]
        return _record(
            f"{kind}:{name}",
            template.format(n=name),
            answer(p),
            [w.person_passage(name)],
            [[p.facts[fact]]],
            _person_negatives(w, rng, {name}),
        )

    return build


for _kind, _fact in (("birthplace", "birth"), ("profession", "job"), ("birth_year", "birth"), ("mentor", "mentor")):
    question(_kind, "in_domain", _people)(_one_hop(_kind, _fact))


@question("mentor_birthplace", "in_domain", _people)
def mentor_birthplace(w: World, name: str, rng: random.Random) -> QARecord:
    p, m = w.people[name], w.people[w.people[name].mentor]
    why = (
        f"According to [GOLD 0], the mentor of {name} was {m.name}. "
        f"According to [GOLD 1], {m.name} was born in {m.city}."
    )
    return _record(
        f"mentor_birthplace:{name}",
        f"Where was the mentor of {name} born?",
        m.city,
        [w.person_passage(name), w.person_passage(m.name)],
        [[p.facts["mentor"]], [m.facts["birth"]]],
        _person_negatives(w, rng, {name, m.name}),
        reasoning=why,
    )


@question("mentor_profession", "in_domain", _people)
def mentor_profession(w: World, name: str, rng: random.Random) -> QARecord:
    p, m = w.people[name], w.people[w.people[name].mentor]
    why = (
        f"According to [GOLD 0], the mentor of {name} was {m.name}. According to [GOLD 1], {m.name} worked as "
        f"{article(m.profession)} {m.profession}."
    )
    return _record(
        f"mentor_profession:{name}",
        f"What was the profession of the mentor of {name}?",
        m.profession,
        [w.person_passage(name), w.person_passage(m.name)],
        [[p.facts["mentor"]], [m.facts["job"]]],
        _person_negatives(w, rng, {name, m.name}),
        reasoning=why,
    )


@question("birth_country", "in_domain", _people)
def birth_country(w: World, name: str, rng: random.Random) -> QARecord:
    p = w.people[name]
    c = w.cities[p.city]
    others = [w.city_passage(x) for x in rng.sample(sorted(set(w.cities) - {p.city}), 3)]
    why = f"According to [GOLD 0], {name} was born in {p.city}. According to [GOLD 1], {p.city} is in {c.country}."
    return _record(
        f"birth_country:{name}",
        f"In which country was {name} born?",
        c.country,
        [w.person_passage(name), w.city_passage(p.city)],
        [[p.facts["birth"]], [c.facts["country"]]],
        others + _person_negatives(w, rng, {name})[:3],
        reasoning=why,
    )


def _filing_negatives(w: World, key: tuple[str, int], rng: random.Random, exclude: set) -> list:
    company, year = key
    same_company = [k for k in sorted(w.filings) if k[0] == company and k not in exclude]
    same_year = [k for k in sorted(w.filings) if k[1] == year and k not in exclude and k[0] != company]
    rng.shuffle(same_year)
    return [w.filing_passage(k) for k in (same_company + same_year)[:N_DISTRACTORS]]


@question("revenue", "out_of_domain", _filings)
def revenue(w: World, key: tuple[str, int], rng: random.Random) -> QARecord:
    f = w.filings[key]
    return _record(
        f"revenue:{f.company}:{f.year}",
        FILING_QUESTIONS["revenue"][0].format(c=f.company, y=f.year),
        FILING_QUESTIONS["revenue"][1](f),
        [w.filing_passage(key)],
        [[f.facts["revenue"]]],
        _filing_negatives(w, key, rng, {key}),
        domain="out_of_domain",
    )


@question("net_income_mc", "out_of_domain", _filings)
def net_income_mc(w: World, key: tuple[str, int], rng: random.Random) -> QARecord:
    """Multiple choice: the right net income among three figures of the same company (other years/revenue)."""
    f = w.filings[key]
    wrong = {w.filings[k].net_income for k in w.filings if k[0] == f.company} | {
        f.revenue,
        f.net_income + 7,
        2 * f.net_income + 3,
        f.net_income + 11,
    }
    wrong.discard(f.net_income)
    options = [f.net_income] + rng.sample(sorted(wrong), 3)
    rng.shuffle(options)
    rec = _record(
        f"net_income_mc:{f.company}:{f.year}",
        FILING_QUESTIONS["net_income"][0].format(c=f.company, y=f.year),
        LETTERS[options.index(f.net_income)],
        [w.filing_passage(key)],
        [[f.facts["net_income"]]],
        _filing_negatives(w, key, rng, {key}),
        domain="out_of_domain",
    )
    rec.choices = [f"{v} million dollars" for v in options]
    return rec


def _compare_keys(w: World) -> list:
    """Each company against its next three (in name order) in each year, when revenues differ."""
    cs, out = w.companies, []
    for y in w.years:
        for i, a in enumerate(cs):
            for b in cs[i + 1 : i + 4]:
                if w.filings[(a, y)].revenue != w.filings[(b, y)].revenue:
                    out.append((a, b, y))
    return out


@question("compare_revenue", "out_of_domain", _compare_keys)
def compare_revenue(w: World, key: tuple[str, str, int], rng: random.Random) -> QARecord:
    a, b, year = key
    fa, fb = w.filings[(a, year)], w.filings[(b, year)]
    win = a if fa.revenue > fb.revenue else b
    first, second = (a, b) if rng.random() < 0.5 else (b, a)
    why = (
        f"According to [GOLD 0], {a} had revenue of {fa.revenue} million dollars. According to [GOLD 1], {b} had "
        f"revenue of {fb.revenue} million dollars."
    )
    return _record(
        f"compare_revenue:{a}:{b}:{year}",
        f"Which company had the higher revenue in fiscal year {year}, {first} or {second}?",
        win,
        [w.filing_passage((a, year)), w.filing_passage((b, year))],
        [[fa.facts["revenue"]], [fb.facts["revenue"]]],
        _filing_negatives(w, (a, year), rng, {(a, year), (b, year)}),
        domain="out_of_domain",
        reasoning=why,
    )
