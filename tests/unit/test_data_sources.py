"""Sources: HotpotQA / 2Wiki parsing and its bad-record errors, passage corpora (splitter, duplicate ids), and
the synthetic generator (deterministic, held-out eval, verbatim supporting sentences)."""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest

from lcrecipes.data.config import DataConfig, SyntheticConfig
from lcrecipes.data.corpus import PassageStore, corpus_passages, split_words
from lcrecipes.data.errors import BadRecords, DataError, Location
from lcrecipes.data.fixtures import hotpotqa_records
from lcrecipes.data.readers import read_records
from lcrecipes.data.sources import SOURCES, get_source
from lcrecipes.data.sources.hotpotqa import join_sentences, parse_hotpotqa
from lcrecipes.data.synthetic.generator import SyntheticGenerator
from lcrecipes.data.synthetic.questions import QUESTION_TYPES

LOC = Location("f.json", 7)


def test_registry_complete():
    assert set(SOURCES) == {"synthetic", "hotpotqa", "2wiki"}
    for name in SOURCES:
        assert get_source(name).name == name
    with pytest.raises(KeyError, match="unknown data source 'nq'"):
        get_source("nq")


def test_hotpotqa_parse_gold_order_and_supporting():
    rec = hotpotqa_records(1)[0]
    r = parse_hotpotqa(rec, LOC)
    assert [p.title for p in r.gold] == ["Org 0", "Person 0"]  # supporting_facts order
    assert r.answers == ["Ashby"] and r.qid == "q0"
    for p in r.gold:
        assert r.supporting[p.pid] and all(s in p.text for s in r.supporting[p.pid])
    assert {p.title for p in r.distractors} == {"Org 100", "Person 100"}
    assert join_sentences(["A b.", " C d.", "E f."]) == "A b. C d. E f."


@pytest.mark.parametrize(
    "mutate,reason,field",
    [
        (lambda r: r.pop("answer"), "missing_field", "answer"),
        (lambda r: r.update(question="  "), "empty_text", "question"),
        (lambda r: r.update(context="x"), "wrong_type", "context"),
        (lambda r: r["supporting_facts"].append(["Nowhere", 0]), "gold_missing", "supporting_facts[2]"),
        (lambda r: r["supporting_facts"].append(["Org 0", 99]), "gold_missing", "supporting_facts[2]"),
        (lambda r: r["context"].append(["Bad", "not a list"]), "wrong_type", "context[4]"),
    ],
)
def test_hotpotqa_bad_record_names_field(mutate, reason, field):
    rec = copy.deepcopy(hotpotqa_records(1)[0])
    mutate(rec)
    with pytest.raises(DataError) as e:
        parse_hotpotqa(rec, LOC)
    assert e.value.reason == reason and e.value.field == field and str(e.value).startswith("f.json:7: ")


def _questions_file(tmp_path, recs):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_hotpotqa_source_errors_and_skip_counts(tmp_path):
    recs = hotpotqa_records(5)
    recs[1] = {**recs[1], "_id": "q0"}  # duplicate id
    recs[3] = {k: v for k, v in recs[3].items() if k != "question"}
    path = _questions_file(tmp_path, recs)
    cfg = DataConfig(source="hotpotqa", train_path=str(path), tokenizer="x", num_train=-1, num_eval=0)
    src = get_source("hotpotqa")(cfg, tmp_path / "cache")
    with pytest.raises(DataError, match=rf"{path}:2: field '_id': question id 'q0' already used"):
        list(src.records("train", BadRecords("error")))
    bad = BadRecords("skip")
    assert [r.qid for r in src.records("train", bad)] == ["q0", "q2", "q4"]
    assert bad.as_dict() == {"duplicate_id": 1, "missing_field": 1}


def test_hotpotqa_eval_split_is_held_out_of_train(tmp_path):
    path = _questions_file(tmp_path, hotpotqa_records(6))
    cfg = DataConfig(source="hotpotqa", train_path=str(path), tokenizer="x", num_train=3, num_eval=2)
    src = get_source("hotpotqa")(cfg, tmp_path)
    assert [r.qid for r in src.records("eval", BadRecords())] == ["q0", "q1"]
    assert [r.qid for r in src.records("train", BadRecords())] == ["q2", "q3", "q4"]


def test_twowiki_reasoning_from_evidences():
    rec = hotpotqa_records(1, twowiki=True)[0]
    r = get_source("2wiki")(DataConfig(), ".").parse(rec, LOC)
    assert r.reasoning == (
        "According to [GOLD 0], the founded by of Org 0 is Person 0. "
        "According to [GOLD 1], the home town of Person 0 is Ashby."
    )
    rec["evidences"] = [["a", "b"]]
    with pytest.raises(DataError, match="evidences\\[0\\]"):
        get_source("2wiki")(DataConfig(), ".").parse(rec, LOC)


def test_split_words_and_corpus_splitter(tmp_path):
    text = " ".join(f"w{i}" for i in range(220))
    pieces = split_words(text, 100)
    assert [len(p.split()) for p in pieces] == [100, 120]  # a 20-word tail joins the previous passage
    assert [len(p.split()) for p in split_words(text + " x" * 10, 100)] == [100, 100, 30]
    assert " ".join(pieces) == text
    recs = [(Location("c", 1), {"id": 5, "title": "T", "text": text})]
    got = [p for _, p in corpus_passages(recs, BadRecords(), split=100)]
    assert [p.pid for p in got] == ["5#0", "5#1"] and all(p.title == "T" for p in got)


def _store(tmp_path, rows, mode):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad = BadRecords(mode)
    return PassageStore.build(tmp_path / "store", corpus_passages(read_records(path, bad), bad), "fp", bad), bad


def test_passage_store_duplicates_and_empty_text(tmp_path):
    rows = [
        {"id": "a", "title": "A", "text": "alpha"},
        {"id": "b", "title": "B", "text": "beta"},
        {"id": "a", "title": "A2", "text": "again"},
        {"id": "c", "title": "C", "text": " "},
    ]
    with pytest.raises(DataError, match=r"corpus.jsonl:4: field 'text': empty"):
        _store(tmp_path, rows, "error")
    with pytest.raises(DataError, match=r"corpus.jsonl:3: field 'id': id already used"):
        _store(tmp_path, rows[:3], "error")
    assert not (tmp_path / "store").exists()  # nothing half-written
    store, bad = _store(tmp_path, rows, "skip")
    assert [p.pid for p in store] == ["a", "b"] and store[0].text == "alpha" and store[1].title == "B"
    assert bad.as_dict() == {"duplicate_id": 1, "empty_text": 1}
    assert store.meta["skipped"] == bad.as_dict()


def test_synthetic_deterministic_and_eval_held_out():
    cfg = SyntheticConfig(domain="mixed")
    a = [r.qid for r in SyntheticGenerator(cfg, 3).records("train", 60)]
    assert a == [r.qid for r in SyntheticGenerator(cfg, 3).records("train", 60)]
    assert a != [r.qid for r in SyntheticGenerator(cfg, 4).records("train", 60)]
    gen = SyntheticGenerator(cfg, 3)
    base = lambda qid: qid.split("#")[0]
    train = {base(r.qid) for r in gen.records("train", 3000)}
    evals = {base(r.qid) for d in ("in_domain", "out_of_domain") for r in gen.records("eval", 400, d)}
    assert train and evals and not train & evals
    assert Counter(q.split(":")[0] for q in a) == dict.fromkeys(cfg.questions, 60 // len(cfg.questions)) | {
        q: 60 // 7 + 1 for q in cfg.questions[: 60 % 7]
    }


@pytest.mark.parametrize("fresh", [False, True])
def test_synthetic_records_are_consistent(fresh):
    gen = SyntheticGenerator(SyntheticConfig(domain="mixed", questions=sorted(QUESTION_TYPES), fresh_facts=fresh), 0)
    for r in gen.records("train", 10 * len(QUESTION_TYPES)):
        assert QUESTION_TYPES[r.qid.split(":")[0]].domain == r.domain
        gold_pids = {p.pid for p in r.gold}
        assert set(r.supporting) == gold_pids
        for p in r.gold:  # supporting sentences are verbatim in their passage
            assert all(s in p.text for s in r.supporting[p.pid])
        assert len(r.distractors) >= 3 and not gold_pids & {p.pid for p in r.distractors}
        if r.choices is not None:
            assert len(r.choices) == 4 and r.answers[0] in "ABCD"
            letter = "ABCD".index(r.answers[0])
            assert r.choices[letter].split()[0] in r.supporting[r.gold[0].pid][0]
        else:
            assert any(r.answers[0] in p.text for p in r.gold)


def test_lm_document_notes_restate_sentences_of_its_own_passages():
    import random

    from lcrecipes.data.synthetic.world import World

    w = World(40, 8, 2, 7)
    plain = w.lm_document(random.Random(3), 4)
    doc = w.lm_document(random.Random(3), 4, n_recall=5)
    body, notes = doc.split("\n\nNotes:\n")
    assert body == plain and "Notes:" not in plain
    lines = notes.split("\n")
    assert len(lines) == 5 and len(set(lines)) == 5
    for line in lines:  # verbatim (the copy target), from this document only
        assert line.endswith(".") and line[:-1] in body


def test_fresh_facts_redraw_answers_per_question_and_keep_the_split():
    """With fresh_facts the same question instance gets new answers (nothing to memorise), deterministically,
    and its passages agree with each other; the train/eval partition of instances is unchanged."""
    types = ["birthplace", "profession", "birth_year", "mentor_birthplace", "revenue", "compare_revenue"]
    fixed = SyntheticGenerator(SyntheticConfig(domain="mixed", questions=types), 3)
    fresh_cfg = SyntheticConfig(domain="mixed", questions=types, fresh_facts=True)
    fresh = SyntheticGenerator(fresh_cfg, 3)
    a = list(fresh.records("train", 600))
    assert [r.qid for r in a] == [r.qid for r in fixed.records("train", 600)]  # same instances, same order
    assert [r.answers for r in a] == [r.answers for r in SyntheticGenerator(fresh_cfg, 3).records("train", 600)]
    by_key: dict[str, set] = {}
    for r in a:
        by_key.setdefault(r.qid.split("#")[0], set()).add(r.answers[0])
    repeated = [answers for answers in by_key.values() if len(answers) > 1]
    assert len(repeated) > 0.5 * len([k for k in by_key if sum(r.qid.split("#")[0] == k for r in a) > 1])
    answers_fixed = {r.qid.split("#")[0]: r.answers[0] for r in fixed.records("train", 600)}
    differ = sum(r.answers[0] != answers_fixed[r.qid.split("#")[0]] for r in a)
    assert differ > 0.6 * len(a), differ  # the fixed world's answers are no guide


def test_lm_document_questions_are_answered_by_its_own_passages():
    import random

    from lcrecipes.data.synthetic.world import World

    w = World(40, 8, 2, 7).variant(11)
    doc = w.lm_document(random.Random(3), 4, n_questions=6)
    body, qa = doc.split("\n\nQuestions:\n")
    assert body == w.lm_document(random.Random(3), 4)
    lines = qa.split("\n")
    assert len(lines) == 12 and all(q.startswith("Q: ") for q in lines[::2])
    assert all(a.startswith("A: ") for a in lines[1::2])
    chosen = [p for p in w.passages() if f"{p.title}\n{p.text}" in body]
    assert len(chosen) == 4
    asked = {(q, a) for p in chosen for q, a in w.fact_questions(p.pid) if a.split(" million")[0] in p.text}
    assert asked == {(q, a) for p in chosen for q, a in w.fact_questions(p.pid)}  # every answer is in its passage
    for q, a in zip(lines[::2], lines[1::2]):
        assert (q[3:], a[3:]) in asked, (q, a)


def test_repeat_attributes_says_city_and_profession_twice_and_changes_nothing_else():
    from lcrecipes.data.synthetic.world import World

    plain, repeated = World(40, 8, 2, 7), World(40, 8, 2, 7, repeat_attributes=True)
    for name in plain.names:
        a, b = plain.person_passage(name).text, repeated.variant(5).person_passage(name).text
        assert repeated.person_passage(name).text.startswith(a + " Late in life ")
        p = repeated.variant(5).people[name]
        assert b.count(f" {p.city}") == 2 and b.count(f" {p.profession}") == 2, b
    assert [p.text for p in plain.passages() if not p.pid.startswith("person:")] == [
        p.text for p in repeated.passages() if not p.pid.startswith("person:")
    ]


def test_synthetic_corpus_cache_tells_repeated_attributes_apart(tmp_path):
    from lcrecipes.data.sources.synthetic import Synthetic

    texts = []
    for repeat in (False, True, False):
        cfg = DataConfig(synthetic=SyntheticConfig(repeat_attributes=repeat))
        store = Synthetic(cfg, tmp_path / "cache").corpus(BadRecords("error"))
        texts.append([store[i].text for i in range(len(store))])
    assert texts[0] == texts[2] and texts[0] != texts[1]
    assert sum("Late in life" in t for t in texts[1]) == 120 and not any("Late in life" in t for t in texts[0])
