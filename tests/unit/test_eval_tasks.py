"""Task loaders on small files written in each benchmark's published schema; bad records name file, line, field."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from pathlib import Path

import pytest

import lcrecipes.eval.tasks as tasks_pkg
from lcrecipes.data.example import Passage, RetrievalExample
from lcrecipes.eval.metrics import METRICS
from lcrecipes.eval.tasks import IN_DOMAIN, OUT_OF_DOMAIN, TASKS, SchemaError, Task, get_task
from lcrecipes.eval.tasks.base import chunk_words


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_registry_complete():
    """Every module of lcrecipes/eval/tasks registers a task; every task declares a known domain and metric."""
    modules = {m.name for m in pkgutil.iter_modules(tasks_pkg.__path__)} - {"base"}
    registered = {importlib.import_module(c.__module__).__name__.rsplit(".", 1)[1] for c in TASKS.values()}
    assert modules == registered
    for name, cls in TASKS.items():
        assert issubclass(cls, Task) and cls.name == name
        assert cls.domain in (IN_DOMAIN, OUT_OF_DOMAIN) and cls.metric in METRICS
    with pytest.raises(KeyError, match="unknown task"):
        get_task("helmet_popqa")


# ---- HELMET KILT -----------------------------------------------------------------------------------------------
def helmet_row(i: int, with_id: bool = True) -> dict:
    gold = {"psg_id": f"g{i}", "title": "Gold page", "text": f"The capital is City{i}."}
    row = {
        "question": f"What is the capital {i}?",
        "answers": [f"City{i}", f"city {i}"],
        "ctxs": [
            {"id": "n1", "title": "Noise", "text": "Unrelated text.", "score": "12.5"},
            gold,
            {"id": "n2", "title": "", "text": "More noise.", "score": "11.0"},
        ],
        "positive_ctxs": [gold],
    }
    return {"id": f"q{i}", **row} if with_id else row


def test_helmet_kilt_loads_docs_gold_and_answers(tmp_path):
    path = write_jsonl(tmp_path / "hotpotqa-dev-multikilt_1000_k20_dep3.jsonl", [helmet_row(0), helmet_row(1)])
    items = get_task("helmet_hotpotqa").load(path, length=4096)
    assert [it.uid for it in items] == ["q0", "q1"]
    ex = items[0].example
    assert ex.gold == [2] and ex.docs[1].title == "Gold page" and ex.docs[1].pid == "g0"
    assert ex.answers == ["City0", "city 0"] and items[0].reference == ex.answers
    assert items[0].length == 4096 and ex.domain == IN_DOMAIN
    assert get_task("helmet_nq").k_of_length[131072] == 1000


def test_helmet_without_id_and_popqa_style_has_answer(tmp_path):
    row = helmet_row(3, with_id=False)
    del row["positive_ctxs"]
    row["ctxs"][2]["has_answer"] = True
    items = get_task("helmet_nq").load(write_jsonl(tmp_path / "nq.jsonl", [row]))
    assert items[0].example.gold == [3] and len(items[0].uid) == 16


def test_helmet_bad_record_names_file_line_field(tmp_path):
    bad = helmet_row(1)
    del bad["answers"]
    path = write_jsonl(tmp_path / "nq.jsonl", [helmet_row(0), bad])
    with pytest.raises(SchemaError, match=re.escape(f"{path}:2: field 'answers': missing")):
        get_task("helmet_nq").load(path)
    bad = helmet_row(0)
    bad["ctxs"][1] = {"title": "no text"}
    with pytest.raises(SchemaError, match=r":1: field 'ctxs\[1\]\.text'"):
        get_task("helmet_nq").load(write_jsonl(tmp_path / "b.jsonl", [bad]))
    (tmp_path / "c.jsonl").write_text('{"question": "q"\n')
    with pytest.raises(SchemaError, match="c.jsonl:1: not valid JSON"):
        get_task("helmet_nq").load(tmp_path / "c.jsonl")


def test_limit_and_missing_file(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [helmet_row(i) for i in range(5)])
    assert len(get_task("helmet_triviaqa").load(path, limit=2)) == 2
    with pytest.raises(FileNotFoundError, match="no such file"):
        get_task("helmet_triviaqa").load(tmp_path / "missing.jsonl")


# ---- InfiniteBench ---------------------------------------------------------------------------------------------
BOOK = "\n\n".join(f"Chapter {i}. " + " ".join(f"word{i}_{j}" for j in range(40)) for i in range(6))


def test_infinitebench_choice_qa_sum(tmp_path):
    opts = ["Walking", "Running", "Sleeping", "Eating"]
    choice = write_jsonl(tmp_path / "longbook_choice_eng.jsonl", [
        {"id": 0, "context": BOOK, "input": "What does he do?", "answer": ["Sleeping"], "options": opts}])  # fmt: skip
    it = get_task("infbench_longbook_choice_eng", chunk_words=100).load(choice)[0]
    assert it.example.choices == opts and it.example.answers == ["C"] and it.reference == ["C"]
    assert len(it.example.docs) == 3 and all(p.text in BOOK for p in it.example.docs)
    qa = write_jsonl(tmp_path / "longbook_qa_eng.jsonl", [
        {"id": 7, "context": BOOK, "input": "Who?", "answer": ["Mr. Smith", "Smith"], "options": []}])  # fmt: skip
    it = get_task("infbench_longbook_qa_eng").load(qa)[0]
    assert it.uid == "7" and it.example.answers == ["Mr. Smith", "Smith"] and it.example.choices is None
    summ = write_jsonl(tmp_path / "longbook_sum_eng.jsonl", [
        {"id": 1, "context": BOOK, "input": "", "answer": ["A long summary."], "options": []}])  # fmt: skip
    it = get_task("infbench_longbook_sum_eng").load(summ)[0]
    assert it.example.question == "Summarize the book." and it.reference == ["A long summary."]


def test_infinitebench_answer_not_an_option(tmp_path):
    path = write_jsonl(tmp_path / "longbook_choice_eng.jsonl", [
        {"id": 0, "context": BOOK, "input": "q", "answer": ["Flying"], "options": ["A", "B", "C", "D"]}])  # fmt: skip
    with pytest.raises(SchemaError, match="longbook_choice_eng.jsonl:1: field 'answer': 'Flying' is not one"):
        get_task("infbench_longbook_choice_eng").load(path)
    path = write_jsonl(tmp_path / "qa.jsonl", [{"id": 0, "context": 3, "input": "q", "answer": ["x"], "options": []}])
    with pytest.raises(SchemaError, match="field 'context': expected str, got int"):
        get_task("infbench_longbook_qa_eng").load(path)


# ---- LongBench-v2 ----------------------------------------------------------------------------------------------
def lb2_row(i: int, answer: str = "B", domain: str = "Single-Document QA") -> dict:
    return {"_id": f"66{i:04d}", "domain": domain, "sub_domain": "Financial", "difficulty": "hard",
            "length": "short", "question": f"Question {i}?", "choice_A": "one", "choice_B": "two",
            "choice_C": "three", "choice_D": "four", "answer": answer, "context": BOOK}  # fmt: skip


def test_longbench_v2_json_array_and_filters(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([lb2_row(0), lb2_row(1, "D", "Code Repository Understanding")], indent=2))
    items = get_task("longbench_v2").load(path)
    assert [it.uid for it in items] == ["660000", "660001"]
    assert items[1].example.choices == ["one", "two", "three", "four"] and items[1].reference == ["D"]
    assert items[0].meta == {"domain": "Single-Document QA", "sub_domain": "Financial", "difficulty": "hard",
                             "length": "short"}  # fmt: skip
    only = get_task("longbench_v2", domains=["Code Repository Understanding"]).load(path)
    assert [it.uid for it in only] == ["660001"]
    assert len(get_task("longbench_v2").load(write_jsonl(tmp_path / "d.jsonl", [lb2_row(2)]))) == 1


def test_longbench_v2_bad_answer_names_array_index(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([lb2_row(0), lb2_row(1, answer="E")]))
    with pytest.raises(SchemaError, match=r"data.json:\[1\]: field 'answer': expected one of A, B, C, D, got 'E'"):
        get_task("longbench_v2").load(path)


# ---- Loong -----------------------------------------------------------------------------------------------------
def loong_row(i: int, docs: list[str], typ: str = "financial", level: int = 1) -> dict:
    return {"id": f"loong_{i}", "level": level, "set": 1, "type": typ, "language": "en",
            "question": "Which company had the higher revenue?", "instruction": "Answer from the reports.",
            "prompt_template": "{docs}\n{instruction}\n{question}", "doc": docs,
            "answer": {"company": "Acme Corp"} if i else "Acme Corp", "shuffle_doc": True}  # fmt: skip


def test_loong_reads_reports_from_doc_dir(tmp_path):
    fin = tmp_path / "doc" / "financial"
    fin.mkdir(parents=True)
    (fin / "2024-Acme Corp-j.txt").write_text("Acme revenue was 10 million.")
    (fin / "2024-Beta Inc-j.txt").write_text("Beta revenue was 5 million.")
    rows = [loong_row(0, ["Acme Corp", "Beta Inc"]), loong_row(1, ["Acme Corp"]), loong_row(2, ["x"], typ="paper")]
    items = get_task("loong_finance").load(write_jsonl(tmp_path / "loong.jsonl", rows))
    assert [it.uid for it in items] == ["loong_0", "loong_1"]
    ex = items[0].example
    assert sorted(p.title for p in ex.docs) == ["Acme Corp", "Beta Inc"] and ex.gold == []
    assert ex.question.startswith("Answer from the reports.") and ex.question.endswith("higher revenue?")
    assert items[1].reference == ['{"company": "Acme Corp"}']
    again = get_task("loong_finance").load(tmp_path / "loong.jsonl")
    assert [p.pid for p in again[0].example.docs] == [p.pid for p in ex.docs]  # deterministic shuffle


def test_loong_inline_docs_and_missing_report(tmp_path):
    row = loong_row(0, ["Acme Corp", "Beta Inc"])
    row["docs"] = "《Acme Corp》\nAcme text.\n\n《Beta Inc》\nBeta text.\n\n"
    items = get_task("loong_finance", doc_dir=str(tmp_path / "none")).load(write_jsonl(tmp_path / "l.jsonl", [row]))
    assert sorted(p.text for p in items[0].example.docs) == ["Acme text.", "Beta text."]
    (tmp_path / "doc" / "financial").mkdir(parents=True)
    path = write_jsonl(tmp_path / "m.jsonl", [loong_row(0, ["Gamma LLC"])])
    with pytest.raises(SchemaError, match=r"m.jsonl:1: field 'doc': no report '\*2024-Gamma LLC\*.txt'"):
        get_task("loong_finance").load(path)


# ---- synthetic -------------------------------------------------------------------------------------------------
def synthetic_row(qid: str, mc: bool = False) -> dict:
    ex = RetrievalExample(
        qid=qid, question="Where was Ann born?", answers=["B"] if mc else ["Oslo"],
        docs=[Passage(f"p{i}", f"T{i}", f"text {i}") for i in range(3)],
        gold=[2], supporting={2: ["text 1"]}, choices=["Rome", "Oslo"] if mc else None, domain="out_of_domain",
    )  # fmt: skip
    return ex.to_json()


def test_synthetic_tasks_round_trip(tmp_path):
    rows = [synthetic_row("a"), synthetic_row("b")]
    items = get_task("synthetic_in_domain").load(write_jsonl(tmp_path / "in_domain_512.jsonl", rows), 512)
    expected = RetrievalExample.from_json(rows[0])
    expected.domain = IN_DOMAIN
    assert items[0].example == expected and items[0].length == 512
    assert items[0].example.domain == IN_DOMAIN and items[0].example.supporting == {2: ["text 1"]}
    mc = get_task("synthetic_ood_mc").load(write_jsonl(tmp_path / "mc.jsonl", [synthetic_row("m", mc=True)]))
    assert mc[0].example.choices == ["Rome", "Oslo"] and mc[0].reference == ["B"]


@pytest.mark.parametrize(
    ("task", "edit", "match"),
    [
        ("synthetic_ood_mc", lambda r: r.update(choices=None), "field 'choices': a multiple-choice task needs"),
        ("synthetic_ood_qa", lambda r: r.update(gold=[9]), r"field 'gold': DOC ids must be ints in 1..3"),
        ("synthetic_ood_qa", lambda r: r["docs"][1].pop("text"), r"field 'docs\[1\]\.text': missing"),
        ("synthetic_in_domain", lambda r: r.update(extra=1), "field 'extra': not a RetrievalExample field"),
    ],
)
def test_synthetic_bad_records(tmp_path, task, edit, match):
    mc = task.endswith("_mc")
    row = synthetic_row("x", mc)
    edit(row)
    path = write_jsonl(tmp_path / "bad.jsonl", [synthetic_row("ok", mc), row])
    with pytest.raises(SchemaError, match=re.escape(f"{path}:2: ") + match):
        get_task(task).load(path)


def test_chunk_words_keeps_text_verbatim():
    text = "a b c\n\nd e f g h i\n\nj"
    chunks = chunk_words(text, 4)
    assert [c.text for c in chunks] == ["a b c", "d e f g", "h i", "j"]
    assert all(c.text in text for c in chunks) and [c.pid for c in chunks] == ["chunk0", "chunk1", "chunk2", "chunk3"]
