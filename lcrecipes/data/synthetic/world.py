"""The synthetic world: invented people, cities and companies with attributes, and the passages about them.

Everything is templated from small word lists so that a tiny model with a ~2K-token vocabulary can learn to read
the passages in a few hundred CPU steps. Every fact sentence is written once, verbatim, into exactly one passage,
so a question's supporting sentences are known exactly. Deterministic in ``world_seed``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from lcrecipes.data.example import Passage

FIRST = (
    "Ada Alan Bela Carl Dora Emil Fern Gus Hana Ivo Jana Karl Lena Milo Nora Otto Pia Quin Rosa Sven Tara "
    "Ugo Vera Wim Xena Yuri Zoe Abel Cleo Dean Elsa Finn Greta Hugo Iris Jonas Kira Luca Mara Nils"
).split()
LAST = (
    "Adler Brandt Castell Dorn Eckart Falk Grau Hessel Imhof Jansen Kessler Lorenz Moser Nagel Ortmann "
    "Pohl Quast Reiter Sauer Thal Ulrich Vogt Weber Xander Yilmaz Zeller Amsel Berger Corvin Dahl Engel "
    "Fischer Gerber Horn Keller Lang Mertens Novak Roth Stark"
).split()
CITIES = (
    "Arden Belmora Calvi Dunmere Elsford Farrow Galen Harwick Istra Jorvik Kelso Lumen Marlow Norwick "
    "Orsay Pellam Quarry Ravena Sorrel Tamsin"
).split()
COUNTRIES = "Alvania Borland Cressia Dovria Estmark Fenland Gorvia Halland".split()
RIVERS = "Amber Brook Crane Dove Elm Fox Glen Heron".split()
PROFESSIONS = (
    "painter sculptor chemist architect surgeon composer botanist astronomer engineer poet historian pilot"
).split()
HOBBIES = "chess sailing gardening fencing rowing pottery cycling archery".split()
FIRM_A = "Blue Red Green Silver Golden North South East West Bright Iron Stone".split()
FIRM_B = "Harbor Valley Ridge River Field Peak Bay Forge Lake Grove".split()
FIRM_C = "Systems Foods Motors Energy Textiles Shipping Mining Labs".split()
FIRST_YEAR = 2015
PERSON_ORDER = ("birth", "job", "mentor", "hobby", "pet", "books")

BIRTH = ("{n} was born in {c} in {y}.", "{n} was born in {y} in the city of {c}.")
JOB = ("{n} worked as {a} {p}.", "By profession {n} was {a} {p}.")
MENTOR = ("The mentor of {n} was {m}.", "{n} studied under {m}, who was a mentor to {n}.")
HOBBY = ("In free time {n} enjoyed {h}.", "{n} was fond of {h}.")
PET = ("{n} kept a {a} named {x}.", "A {a} called {x} lived with {n} for many years.")
RETURN = "Late in life {n} returned to {c} and still worked there as {a} {p}."
BOOKS = ("{n} wrote {k} books and many letters.", "Over a long life {n} published {k} books.")
ANIMALS = "cat dog parrot horse goat rabbit".split()
CITY_IN = "{c} is a city in {k}."
CITY_MORE = ("It lies on the {r} river and was founded in {y}.", "The {r} river flows through it.")
REVENUE = "Revenue for fiscal year {y} was {v} million dollars."
INCOME = "Net income for fiscal year {y} was {v} million dollars."
STAFF = "At the end of the year the company had {e} employees."

# One-hop questions about one passage: kind -> (question template, its answer from the entity). The question types
# (questions.py) and the questions closing LM documents (``lm_doc_questions``) both ask them.
PERSON_QUESTIONS = {
    "birthplace": ("Where was {n} born?", lambda p: p.city),
    "birth_year": ("What was the birth year of {n}?", lambda p: str(p.year)),
    "profession": ("What was the profession of {n}?", lambda p: p.profession),
    "mentor": ("Who was the mentor of {n}?", lambda p: p.mentor),
}
FILING_QUESTIONS = {
    "revenue": ("What was the revenue of {c} in fiscal year {y}?", lambda f: f"{f.revenue} million dollars"),
    "net_income": ("What was the net income of {c} in fiscal year {y}?", lambda f: f"{f.net_income} million dollars"),
}


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass
class Person:
    name: str
    city: str
    year: int
    profession: str
    mentor: str = ""
    facts: dict[str, str] = field(default_factory=dict)  # attribute -> its verbatim sentence


@dataclass
class City:
    name: str
    country: str
    facts: dict[str, str] = field(default_factory=dict)


@dataclass
class Filing:
    company: str
    year: int
    revenue: int
    net_income: int
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"{self.company} annual report {self.year}"


class World:
    """People (with mentors), cities (with countries) and company filings; ``passage(key)`` for each."""

    def __init__(self, entities: int, companies: int, years: int, seed: int, repeat_attributes: bool = False):
        self.repeat_attributes = repeat_attributes
        rng = random.Random(seed)
        self.cities = {c: self._city(c, rng) for c in CITIES}
        names = [f"{a} {b}" for a in FIRST for b in LAST]
        self.people = {n: self._person(n, rng) for n in rng.sample(names, entities)}
        self.names = list(self.people)
        self._assign_mentors(rng)
        firms = [f"{a} {b} {c}" for a in FIRM_A for b in FIRM_B for c in FIRM_C]
        self.filings = {
            (c, FIRST_YEAR + y): self._filing(c, FIRST_YEAR + y, rng)
            for c in rng.sample(firms, companies)
            for y in range(years)
        }
        self.companies = sorted({c for c, _ in self.filings})
        self.years = sorted({y for _, y in self.filings})

    def variant(self, seed: int) -> World:
        """The same people, companies and years with every attribute (city, year, profession, mentor, country,
        figures, ...) drawn afresh from ``seed``: a question asked of a variant can only be answered from its
        context, never from facts memorised off other examples."""
        rng = random.Random(seed)
        w = World.__new__(World)
        w.repeat_attributes = self.repeat_attributes
        w.cities = {c: self._city(c, rng) for c in CITIES}
        w.people = {n: self._person(n, rng) for n in self.names}
        w.names = list(self.names)
        w._assign_mentors(rng)
        w.filings = {(c, y): self._filing(c, y, rng) for c, y in self.filings}
        w.companies, w.years = self.companies, self.years
        return w

    def _assign_mentors(self, rng: random.Random) -> None:
        for p in self.people.values():
            p.mentor = p.name
            while p.mentor == p.name:
                p.mentor = rng.choice(self.names)
            p.facts["mentor"] = rng.choice(MENTOR).format(n=p.name, m=p.mentor)
        self.by_mentor: dict[str, list[str]] = {}
        self.by_city: dict[str, list[str]] = {}
        for p in self.people.values():
            self.by_mentor.setdefault(p.mentor, []).append(p.name)
            self.by_city.setdefault(p.city, []).append(p.name)

    @staticmethod
    def _city(name: str, rng: random.Random) -> City:
        city = City(name, rng.choice(COUNTRIES))
        city.facts["country"] = CITY_IN.format(c=name, k=city.country)
        city.facts["more"] = rng.choice(CITY_MORE).format(r=rng.choice(RIVERS), y=rng.randrange(900, 1800))
        return city

    @staticmethod
    def _person(name: str, rng: random.Random) -> Person:
        p = Person(name, rng.choice(CITIES), rng.randrange(1900, 1990), rng.choice(PROFESSIONS))
        p.facts["birth"] = rng.choice(BIRTH).format(n=name, c=p.city, y=p.year)
        p.facts["job"] = rng.choice(JOB).format(n=name, p=p.profession, a=article(p.profession))
        p.facts["hobby"] = rng.choice(HOBBY).format(n=name, h=rng.choice(HOBBIES))
        p.facts["pet"] = rng.choice(PET).format(n=name, a=rng.choice(ANIMALS), x=rng.choice(FIRST))
        p.facts["books"] = rng.choice(BOOKS).format(n=name, k=rng.randrange(1, 30))
        return p

    @staticmethod
    def _filing(company: str, year: int, rng: random.Random) -> Filing:
        f = Filing(company, year, rng.randrange(50, 990), 0)
        f.net_income = rng.randrange(1, max(2, f.revenue // 4))
        f.facts["head"] = f"{company} filed its annual report for fiscal year {year}."
        f.facts["revenue"] = REVENUE.format(y=year, v=f.revenue)
        f.facts["net_income"] = INCOME.format(y=year, v=f.net_income)
        f.facts["staff"] = STAFF.format(e=rng.randrange(20, 5000))
        return f

    # ---- passages ------------------------------------------------------------------------------------------
    def person_passage(self, name: str) -> Passage:
        f = self.people[name].facts
        text = " ".join(f[k] for k in PERSON_ORDER)
        if self.repeat_attributes:  # the city and profession said twice: the text itself shows copying them
            p = self.people[name]
            text += " " + RETURN.format(n=name, c=p.city, a=article(p.profession), p=p.profession)
        return Passage(f"person:{name}", name, text)

    def city_passage(self, name: str) -> Passage:
        f = self.cities[name].facts
        return Passage(f"city:{name}", name, " ".join([f["country"], f["more"]]))

    def filing_passage(self, key: tuple[str, int]) -> Passage:
        f = self.filings[key]
        text = " ".join([f.facts["head"], f.facts["revenue"], f.facts["net_income"], f.facts["staff"]])
        return Passage(f"filing:{f.company}:{f.year}", f.title, text)

    def passages(self) -> list[Passage]:
        """Every passage of the world (the retrieval corpus), in a fixed order."""
        return (
            [self.person_passage(n) for n in sorted(self.people)]
            + [self.city_passage(c) for c in sorted(self.cities)]
            + [self.filing_passage(k) for k in sorted(self.filings)]
        )

    def lm_document(self, rng: random.Random, n_passages: int, n_recall: int = 0, n_questions: int = 0) -> str:
        """A plain long document: ``n_passages`` random passages under their titles (for LM pretraining), then
        ``n_recall`` of their fact sentences restated verbatim under ``Notes:`` and ``n_questions`` questions about
        them answered under ``Questions:`` (none when 0)."""
        pool = self.passages()
        chosen = rng.sample(pool, min(n_passages, len(pool)))
        doc = "\n\n".join(f"{p.title}\n{p.text}" for p in chosen)
        if n_recall > 0:
            sentences = [s for p in chosen for s in p.text.split(". ") if s]
            notes = [s if s.endswith(".") else s + "." for s in rng.sample(sentences, min(n_recall, len(sentences)))]
            doc += "\n\nNotes:\n" + "\n".join(notes)
        if n_questions > 0:
            qa = [q for p in chosen for q in self.fact_questions(p.pid)]
            asked = rng.sample(qa, min(n_questions, len(qa)))
            doc += "\n\nQuestions:\n" + "\n".join(f"Q: {q}\nA: {a}" for q, a in asked)
        return doc

    def fact_questions(self, pid: str) -> list[tuple[str, str]]:
        """One-hop questions a passage answers, with their answers, as ``(question, answer)``."""
        kind, _, key = pid.partition(":")
        if kind == "person":
            return [(q.format(n=key), answer(self.people[key])) for q, answer in PERSON_QUESTIONS.values()]
        if kind == "city":
            return [(f"In which country is {key}?", self.cities[key].country)]
        company, _, year = key.rpartition(":")
        f = self.filings[(company, int(year))]
        return [(q.format(c=company, y=year), answer(f)) for q, answer in FILING_QUESTIONS.values()]
