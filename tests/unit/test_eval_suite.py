"""Suites: the shipped YAMLs load; bad ones fail with the file and the dotted key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from lcrecipes.eval.runner import expand_settings
from lcrecipes.eval.suite import EvalConfig, SuiteError, load_suite

REPO = Path(__file__).resolve().parents[2]
SUITES = sorted((REPO / "eval" / "suites").glob("*.yaml"))


def test_suites_are_shipped():
    assert {p.stem for p in SUITES} >= {"tiny_cpu", "study"}


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.stem)
def test_shipped_suite_loads(path):
    suite = load_suite(path)
    assert suite.name == path.stem and suite.source == str(path)
    names = [s.name for s in expand_settings(suite)]
    assert names[0] == "full" and len(names) == len(set(names))


def test_tiny_cpu_matches_its_budgets():
    suite = load_suite(REPO / "eval" / "suites" / "tiny_cpu.yaml")
    assert [c.method for c in suite.settings.compression] == ["snapkv", "streamingllm"]
    assert all(c.budgets == suite.settings.rag[0].budgets for c in suite.settings.compression)
    lengths = (256, 512, 1024)
    assert suite.tasks[0].files() == [(n, Path(f"runs/tiny_cpu/eval_data/in_domain_{n}.jsonl")) for n in lengths]


def test_helmet_paths_use_k():
    suite = load_suite(REPO / "eval" / "suites" / "study.yaml")
    from lcrecipes.eval.tasks import get_task

    spec = suite.tasks[0]
    files = spec.files(get_task(spec.name).k_of_length)
    assert files[0][1].name == "hotpotqa-dev-multikilt_1000_k20_dep3.jsonl"
    assert files[-1] == (131072, Path("data/helmet/kilt/hotpotqa-dev-multikilt_1000_k1000_dep3.jsonl"))


BASE = {"name": "t", "tasks": [{"name": "synthetic_ood_qa", "path": "x.jsonl"}],
        "settings": {"compression": [{"method": "snapkv", "budgets": [8]}], "rag": [{"retriever": "bm25",
                                                                                   "budgets": [8]}]}}  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(seeds=1), "seeds: unknown key"),
        (lambda d: d.update(seed="zero"), "seed: expected int, got str"),
        (lambda d: d["tasks"][0].update(lengths=[1, "2K"]), r"tasks[0].lengths[1]: expected int, got str"),
        (lambda d: d["tasks"][0].pop("path"), "tasks[0].path: required key missing"),
        (lambda d: d["tasks"][0].update(name="nope"), "tasks[0].name: unknown task 'nope'"),
        (lambda d: d["tasks"][0].update(lengths=[4096]), "tasks[0].path: has lengths but no {length} or {k}"),
        (lambda d: d["tasks"][0].update(kinds=["full", "cached"]), "tasks[0].kinds: must be a subset"),
        (lambda d: d.update(truncation="start"), "truncation: must be one of ['middle', 'end']"),
        (lambda d: d["settings"]["compression"][0].update(method="h2o"), "settings.compression[0].method: unknown"),
        (lambda d: d["settings"]["compression"][0].update(budgets=[0]), "settings.compression[0].budgets: need"),
        (lambda d: d["settings"]["compression"][0].update(modes=["lazy"]), "settings.compression[0].modes: ['lazy']"),
        (lambda d: d["settings"]["rag"][0].update(retriever="splade"), "settings.rag[0].retriever: unknown 'splade'"),
        (lambda d: d["tasks"].append({"name": "loong_finance", "path": "l.jsonl"}), "judge: task 'loong_finance'"),
        (lambda d: d.update(tasks={"name": "x"}), "tasks: expected a list, got dict"),
    ],
)
def test_bad_suite_names_file_and_key(tmp_path, edit, message):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SuiteError, match=re.escape(f"{path}: {message}")):
        load_suite(path)


def test_unreadable_suite(tmp_path):
    (tmp_path / "a.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SuiteError, match="a suite is a mapping"):
        load_suite(tmp_path / "a.yaml")
    with pytest.raises(SuiteError, match="cannot read suite"):
        load_suite(tmp_path / "missing.yaml")


def test_eval_config_problems(tmp_path):
    assert EvalConfig().problems() == []
    assert EvalConfig(suite=str(SUITES[0])).problems() == []
    assert EvalConfig(suite=str(tmp_path / "no.yaml")).problems()[0][0] == "eval.suite"
