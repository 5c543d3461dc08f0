"""Reports from hand-made rows with known scores: tables, % drop, gains, gap, kept-bytes flag, plots, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lcrecipes.eval.report import load_runs, resolve_baseline, run_summary, write_report


def row(task, domain, setting, score, length=None, uid="u", kept=100, full=100, **kw) -> dict:
    kind = "full" if setting == "full" else ("rag" if setting.startswith("rag") else "compression")
    method = setting.split("@")[0] if kind == "compression" else "none"
    budget = int(setting.split("@")[1].split(":")[0]) if "@" in setting else None
    return {"key": f"{task}|{length}|{uid}|{setting}", "task": task, "domain": domain, "metric": "subem",
            "length": length, "uid": uid, "setting": setting, "kind": kind, "method": method, "budget": budget,
            "mode": "query_aware" if kind == "compression" else None, "retriever": "bm25" if kind == "rag" else None,
            "score": float(score), "kv_bytes_full": full, "kv_bytes_kept": kept, "peak_rss_bytes": 2**20,
            "prefill_s": 0.1, "decode_s": 0.2, "n_kept_tokens": budget or 300, "memory_claim_ok": True,
            **kw}  # fmt: skip


def write_run(d: Path, model: str, strategy: str, rows: list[dict]) -> Path:
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"model": model, "strategy": strategy, "suite_name": "t",
                                            "model_dir": f"/m/{model}"}))  # fmt: skip
    (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"partial')
    return d


def base_rows() -> list[dict]:
    ID, OOD = "in_domain", "out_of_domain"
    rows = [row("syn_id", ID, "full", s, n, f"x{i}", attn_ndcg10=0.5) for n, ss in ((512, [1, 0]), (1024, [1, 1]))
            for i, s in enumerate(ss)]  # fmt: skip
    rows += [row("qa", OOD, "full", s, uid=f"q{i}") for i, s in enumerate([1, 1])]
    rows += [row("mc", OOD, "full", s, uid=f"m{i}") for i, s in enumerate([0, 1])]
    rows += [row("qa", OOD, "snapkv@128:query_aware", s, uid=f"q{i}", kept=25) for i, s in enumerate([1, 0])]
    rows += [row("mc", OOD, "snapkv@128:query_aware", 0, uid=f"m{i}", kept=25) for i in range(2)]
    rows += [row("qa", OOD, "topk_retrieval@128:query_aware", 1, uid=f"q{i}") for i in range(2)]
    rows += [row("qa", OOD, "rag_bm25@128", s, uid=f"q{i}") for i, s in enumerate([1, 0])]
    return rows


@pytest.fixture
def runs(tmp_path):
    base = write_run(tmp_path / "base", "tiny", "answer_only", base_rows())
    better = [dict(r, score=1.0) if r["task"] == "qa" else r for r in base_rows()]
    tuned = write_run(tmp_path / "tuned", "tiny", "doc_ids", better)
    return base, tuned


def test_numbers(runs):
    base, tuned = load_runs(list(runs))
    assert (base.label, tuned.label) == ("tiny-answer_only", "tiny-doc_ids")  # same model name: made unique
    s = run_summary(base)
    assert s["in_domain_by_length"]["syn_id"]["512"]["mean"] == 50.0
    assert s["settings"]["full"]["syn_id"]["macro"] == 75.0  # mean of 50 (512) and 100 (1024)
    assert s["settings"]["full"]["avg_out_of_domain"] == 75.0  # qa 100, mc 50
    assert s["settings"]["snapkv@128:query_aware"]["avg_out_of_domain"] == 25.0
    assert s["drop_pct"]["snapkv@128:query_aware"]["avg_out_of_domain"] == pytest.approx(-200 / 3)
    assert s["drop_pct"]["snapkv@128:query_aware"]["qa"] == -50.0
    assert s["gap_id_minus_ood"]["full"] == 0.0
    assert s["memory"]["snapkv@128:query_aware"]["kept_falls"] is True
    assert s["memory"]["topk_retrieval@128:query_aware"]["kept_falls"] is False  # masks only: flagged
    assert s["ndcg10"] == {"syn_id": 50.0, "avg": 50.0}
    ci = s["settings"]["full"]["mc"]
    assert ci["n"] == 2 and ci["lo"] <= ci["mean"] <= ci["hi"]
    g = run_summary(tuned, base)["gain_over_base"]
    assert g["snapkv@128:query_aware"]["qa"] == 50.0 and g["full"]["mc"] == 0.0 and g["rag_bm25@128"]["qa"] == 50.0


def test_write_report_files(runs, tmp_path):
    base, tuned = runs
    out = tmp_path / "report"
    summary = write_report([base, tuned], out, baseline=base)
    text = summary.read_text()
    for title in ("Table 1", "Table 2", "Table 3", "Table 4", "Table 10", "Gain over"):
        assert title in text
    assert "| tiny-doc_ids (doc_ids) |" in text
    for label in ("tiny-answer_only", "tiny-doc_ids"):
        md = (out / label / "report.md").read_text()
        assert "In-domain, full context, by length" in md and "⚠ kept bytes do not fall" in md
        assert "75.0" in md and "[" in md
        for png in ("score_vs_length.png", "score_vs_budget.png"):
            assert (out / label / png).read_bytes()[:4] == b"\x89PNG"
        json.loads((out / label / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"bad {c}"))
    assert (out / "score_vs_length.png").stat().st_size > 1000
    data = json.loads((out / "summary.json").read_text())
    assert set(data) == {"tiny-answer_only", "tiny-doc_ids"}


def test_empty_run_dir_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no prediction rows"):
        load_runs([tmp_path / "empty"])


def test_baseline_given_as_the_base_models_eval_folder_picks_the_same_suite(tmp_path):
    base = write_run(tmp_path / "base" / "eval" / "t", "base", "answer_only", base_rows())
    write_run(tmp_path / "base" / "eval" / "other", "base", "answer_only", [])  # another suite's run: not picked
    tuned = write_run(tmp_path / "tuned", "tiny", "doc_ids", base_rows())
    runs = load_runs([tuned])
    assert resolve_baseline(tmp_path / "base" / "eval", runs) == base
    assert resolve_baseline(base, runs) == base
    with pytest.raises(ValueError, match="baseline .*nowhere.*'t' run"):
        resolve_baseline(tmp_path / "nowhere", runs)


def test_paired_gain_interval(tmp_path):
    """The gain's interval pairs examples by (task, length, uid), whatever the row order: a model right exactly where
    the base is, plus 10 more of 40, gains 25 points with an interval that excludes 0, while the two models' own
    intervals overlap. Examples only one model answered are left out."""
    from lcrecipes.eval.metrics import bootstrap_ci
    from lcrecipes.eval.report import paired_gain_ci

    ID = "in_domain"
    base_scores = [1] * 20 + [0] * 20
    tuned_scores = [1] * 30 + [0] * 10
    base = [row("syn_id", ID, "full", s, 512, f"x{i}") for i, s in enumerate(base_scores)]
    tuned = [row("syn_id", ID, "full", s, 512, f"x{i}") for i, s in enumerate(tuned_scores)][::-1]
    tuned.append(row("syn_id", ID, "full", 1, 512, "only_here"))
    b, t = load_runs([write_run(tmp_path / "b", "base", "answer_only", base),
                      write_run(tmp_path / "t", "tuned", "doc_ids", tuned)])
    gain = paired_gain_ci(t, b, ["syn_id"])
    assert gain["n"] == 40 and gain["mean"] == pytest.approx(25.0)
    assert 0 < gain["lo"] < 25 < gain["hi"]
    _, _, base_hi = bootstrap_ci([float(s) for s in base_scores])
    _, tuned_lo, _ = bootstrap_ci([float(s) for s in tuned_scores])
    assert tuned_lo * 100 < base_hi * 100  # unpaired, the two intervals overlap
    assert run_summary(t, b)["gain_ci"]["syn_id"] == gain
