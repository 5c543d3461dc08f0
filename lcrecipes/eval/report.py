"""Reports from eval rows (never re-running a model): per recipe and across recipes, Markdown + PNG + JSON.

    lcr report runs/base/eval/tiny_cpu runs/ao/eval/tiny_cpu --out reports/tiny_cpu --baseline runs/base/eval/tiny_cpu

Per run dir (``<out>/<label>/``): in-domain score per task × length; every setting (full context, each compression
method × budget × mode, RAG × budget) per task and domain average; % drop under compression; gain over the
baseline run; in-domain minus out-of-domain gap; KV bytes / memory / time per setting with a flag where kept bytes
do not fall below full; attention NDCG@10 when present. Across runs (``<out>/summary.md``): the study's Table 1
(in-domain, strategies as rows), Table 2 (out-of-domain: full, compressed, RAG), Table 3 (% drop), Table 4
(NDCG@10), Table 10 (RAG budget sweep). Scores are ×100; ``[lo–hi]`` is a 95% bootstrap CI (fixed seed) over the
examples of a cell (lengths pooled). Task averages are macro: over lengths, then over tasks.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from lcrecipes.eval.metrics import bootstrap_ci
from lcrecipes.eval.runner import PREDICTIONS, read_rows
from lcrecipes.eval.tasks import IN_DOMAIN, OUT_OF_DOMAIN

DOMAINS = (IN_DOMAIN, OUT_OF_DOMAIN)
NAN = math.nan


@dataclass
class Run:
    """One eval run dir: its rows and its run.json."""

    label: str
    run_dir: Path
    meta: dict
    rows: list[dict]
    _by: dict = field(default_factory=dict, repr=False)

    @property
    def strategy(self) -> str:
        return self.meta.get("strategy", "?")

    def select(self, task: str, setting: str, length: int | None | str = "any") -> list[dict]:
        if not self._by:
            for r in self.rows:
                self._by.setdefault((r["task"], r["setting"]), []).append(r)
        rows = self._by.get((task, setting), [])
        return rows if length == "any" else [r for r in rows if r["length"] == length]

    def tasks(self, domain: str) -> list[str]:
        return list(dict.fromkeys(r["task"] for r in self.rows if r["domain"] == domain))

    def lengths(self, task: str) -> list[int]:
        return sorted({r["length"] for r in self.rows if r["task"] == task and r["length"] is not None})

    def settings(self) -> list[str]:
        info = self.setting_info()
        return sorted(info, key=lambda s: _setting_order(info[s]))

    def setting_info(self) -> dict[str, dict]:
        keys = ("kind", "method", "budget", "mode", "retriever")
        return {r["setting"]: {k: r.get(k) for k in keys} for r in self.rows}

    def score(self, task: str, setting: str) -> float:
        """Mean score ×100 of a task under a setting: macro over lengths (NaN if no rows)."""
        groups = defaultdict(list)
        for r in self.select(task, setting):
            groups[r["length"]].append(r["score"])
        return _mean([100 * _mean(v) for v in groups.values()])

    def domain_avg(self, domain: str, setting: str) -> float:
        return _mean([self.score(t, setting) for t in self.tasks(domain)])

    def ci(self, task: str, setting: str, length: int | None | str = "any") -> dict:
        mean, lo, hi = bootstrap_ci([r["score"] for r in self.select(task, setting, length)])
        n = len(self.select(task, setting, length))
        return {"mean": 100 * mean, "lo": 100 * lo, "hi": 100 * hi, "n": n}


def _setting_order(info: dict) -> tuple:
    kind_rank = {"full": 0, "compression": 1, "rag": 2}[info["kind"]]
    return kind_rank, info["method"] or "", info["retriever"] or "", info["mode"] or "", info["budget"] or 0


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else NAN


def load_runs(run_dirs: list[str | Path]) -> list[Run]:
    """Read each run dir's rows and run.json; labels are made unique (model, then model-strategy, then #i)."""
    runs = []
    for d in run_dirs:
        d = Path(d)
        meta_path = d / "run.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        rows = read_rows(d)
        if not rows:
            raise ValueError(f"{d}: no prediction rows (run `lcr eval` first)")
        runs.append(Run(meta.get("model") or d.name, d, meta, rows))
    seen = defaultdict(int)
    for r in runs:
        seen[r.label] += 1
    for r in runs:
        if seen[r.label] > 1:
            r.label = f"{r.label}-{r.strategy}"
    labels = defaultdict(int)
    for r in runs:
        labels[r.label] += 1
        if labels[r.label] > 1:
            r.label = f"{r.label}#{labels[r.label]}"
    return runs


# ---- numbers ---------------------------------------------------------------------------------------------------
def run_summary(run: Run, base: Run | None = None) -> dict:
    """Everything a run's report shows, as plain data (the JSON)."""
    settings = run.settings()
    out: dict = {"label": run.label, "strategy": run.strategy, "model_dir": run.meta.get("model_dir"),
                 "suite": run.meta.get("suite_name"), "n_rows": len(run.rows)}  # fmt: skip
    out["in_domain_by_length"] = {
        t: {str(n): run.ci(t, "full", n) for n in run.lengths(t)} for t in run.tasks(IN_DOMAIN)
    }
    out["settings"] = {
        s: {**{t: run.ci(t, s) | {"macro": run.score(t, s)} for d in DOMAINS for t in run.tasks(d)},
            **{f"avg_{d}": run.domain_avg(d, s) for d in DOMAINS}}
        for s in settings
    }  # fmt: skip
    out["drop_pct"] = drop_table(run)
    out["gap_id_minus_ood"] = {s: run.domain_avg(IN_DOMAIN, s) - run.domain_avg(OUT_OF_DOMAIN, s) for s in settings}
    if base is not None:
        out["gain_over_base"] = gain_table(run, base)
        out["gain_ci"] = {t: paired_gain_ci(run, base, [t]) for t in run.tasks(IN_DOMAIN)}
        out["gain_ci"][f"avg_{IN_DOMAIN}"] = paired_gain_ci(run, base, run.tasks(IN_DOMAIN))
    out["memory"] = memory_table(run)
    out["ndcg10"] = ndcg_table(run)
    return out


def drop_table(run: Run) -> dict[str, dict[str, float]]:
    """% change vs full context, per compression setting and task (plus domain averages)."""
    info = run.setting_info()
    out = {}
    for s in run.settings():
        if info[s]["kind"] != "compression":
            continue
        row = {t: _pct(run.score(t, s), run.score(t, "full")) for d in DOMAINS for t in run.tasks(d)}
        row |= {f"avg_{d}": _pct(run.domain_avg(d, s), run.domain_avg(d, "full")) for d in DOMAINS}
        out[s] = row
    return out


def _pct(x: float, ref: float) -> float:
    return 100 * (x - ref) / ref if ref and not math.isnan(ref) and not math.isnan(x) else NAN


def gain_table(run: Run, base: Run) -> dict[str, dict[str, float]]:
    """Points gained over the base run, per setting and task, for the settings both runs have."""
    out = {}
    for s in run.settings():
        if s not in base.setting_info():
            continue
        row = {t: run.score(t, s) - base.score(t, s) for d in DOMAINS for t in run.tasks(d)}
        row |= {f"avg_{d}": run.domain_avg(d, s) - base.domain_avg(d, s) for d in DOMAINS}
        out[s] = row
    return out


def paired_gain_ci(run: Run, base: Run, tasks: list[str], setting: str = "full") -> dict:
    """Gain ×100 over the base run on the examples both answered (same task, length and uid), with a 95% paired
    bootstrap interval: the interval of the mean per-example difference, which, unlike two separate intervals,
    cancels the spread the two models share across examples."""
    def scores(r: Run) -> dict:
        return {(t, x["length"], x["uid"]): x["score"] for t in tasks for x in r.select(t, setting)}

    mine, theirs = scores(run), scores(base)
    diffs = [mine[k] - theirs[k] for k in mine.keys() & theirs.keys()]
    mean, lo, hi = bootstrap_ci(sorted(diffs))
    return {"mean": 100 * mean, "lo": 100 * lo, "hi": 100 * hi, "n": len(diffs)}


def memory_table(run: Run) -> dict[str, dict]:
    """Mean KV bytes (full, kept), peak memory and time per setting; ``kept_falls`` is False (a flag) when a
    compression setting's kept bytes are not below full, or a row's measured bytes contradict the method's claim."""
    groups = defaultdict(list)
    for r in run.rows:
        groups[r["setting"]].append(r)
    info, out = run.setting_info(), {}
    for s in run.settings():
        rows = groups[s]
        full, kept = _mean([r["kv_bytes_full"] for r in rows]), _mean([r["kv_bytes_kept"] for r in rows])
        out[s] = {"kv_bytes_full": full, "kv_bytes_kept": kept, "kept_ratio": kept / full if full else NAN,
                  "peak_rss_bytes": _mean([r["peak_rss_bytes"] for r in rows]),
                  "prefill_s": _mean([r["prefill_s"] for r in rows]), "decode_s": _mean([r["decode_s"] for r in rows]),
                  "n_kept_tokens": _mean([r["n_kept_tokens"] for r in rows])}  # fmt: skip
        if info[s]["kind"] == "compression":
            claims = all(r.get("memory_claim_ok", True) for r in rows)
            out[s]["kept_falls"] = bool(kept < full) and claims
    return out


def ndcg_table(run: Run) -> dict[str, float]:
    by_task = defaultdict(list)
    for r in run.rows:
        if r.get("attn_ndcg10") is not None:
            by_task[r["task"]].append(100 * r["attn_ndcg10"])
    out = {t: _mean(v) for t, v in by_task.items()}
    if out:
        out["avg"] = _mean(list(out.values()))
    return out


# ---- Markdown --------------------------------------------------------------------------------------------------
def fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_ci(c: dict) -> str:
    return "–" if not c["n"] else f"{fmt(c['mean'])} [{fmt(c['lo'])}–{fmt(c['hi'])}]"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def length_name(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def run_markdown(run: Run, summ: dict) -> str:
    parts = [f"# {run.label} ({run.strategy})", f"Model `{summ['model_dir']}`, suite `{summ['suite']}`, "
             f"{summ['n_rows']} rows. Scores ×100, [95% bootstrap CI]."]  # fmt: skip
    ids = run.tasks(IN_DOMAIN)
    lens = sorted({n for t in ids for n in run.lengths(t)})
    if ids and lens:
        rows = [[t] + [fmt_ci(summ["in_domain_by_length"][t].get(str(n), {"n": 0})) for n in lens]
                + [fmt(run.score(t, "full"))] for t in ids]  # fmt: skip
        parts += ["## In-domain, full context, by length", md_table(["task", *map(length_name, lens), "avg"], rows)]
    for d in DOMAINS:
        tasks = run.tasks(d)
        if tasks:
            rows = [[s] + [fmt_ci(summ["settings"][s][t]) for t in tasks] + [fmt(summ["settings"][s][f"avg_{d}"])]
                    for s in run.settings()]  # fmt: skip
            title = f"## {d.replace('_', '-').capitalize()}: every setting"
            parts += [title, md_table(["setting", *tasks, "avg"], rows)]
    parts += _dict_section("% change under compression vs full context", summ["drop_pct"], run)
    if "gain_over_base" in summ:
        parts += _dict_section("Gain over the base model (points)", summ["gain_over_base"], run)
    gap = [[s, fmt(v)] for s, v in summ["gap_id_minus_ood"].items()]
    parts += ["## In-domain minus out-of-domain gap (points)", md_table(["setting", "ID − OOD"], gap)]
    parts += [_memory_md(summ["memory"])]
    if summ["ndcg10"]:
        parts += ["## Attention NDCG@10 (full context)", md_table(list(summ["ndcg10"]), [
            [fmt(v) for v in summ["ndcg10"].values()]])]  # fmt: skip
    return "\n\n".join(parts) + "\n"


def _dict_section(title: str, table: dict[str, dict], run: Run) -> list[str]:
    if not table:
        return []
    cols = [t for d in DOMAINS for t in run.tasks(d)] + [f"avg_{d}" for d in DOMAINS]
    return [
        f"## {title}",
        md_table(["setting", *cols], [[s] + [fmt(v.get(c)) for c in cols] for s, v in table.items()]),
    ]


def _memory_md(mem: dict) -> str:
    mib = 1 / 2**20
    rows = [[s, fmt(m["n_kept_tokens"], 0), fmt(m["kv_bytes_full"] * mib, 3), fmt(m["kv_bytes_kept"] * mib, 3),
             fmt(m["kept_ratio"], 3), fmt(m["peak_rss_bytes"] * mib, 0), fmt(m["prefill_s"], 3), fmt(m["decode_s"], 3),
             {True: "ok", False: "⚠ kept bytes do not fall"}.get(m.get("kept_falls"), "")]
            for s, m in mem.items()]  # fmt: skip
    head = ["setting", "kept tokens", "KV full MiB", "KV kept MiB", "kept/full", "peak MiB", "prefill s", "decode s",
            "memory"]  # fmt: skip
    return "## KV cache, memory and time (means per row)\n\n" + md_table(head, rows)


def summary_markdown(runs: list[Run], base: Run | None) -> str:
    """The across-recipe tables (strategies as rows)."""
    name = lambda r: f"{r.label} ({r.strategy})"
    parts = ["# Eval summary", "Scores ×100; averages are macro over lengths then tasks."]
    ids = list(dict.fromkeys(t for r in runs for t in r.tasks(IN_DOMAIN)))
    if ids:
        rows = [
            [name(r)] + [fmt(r.score(t, "full")) for t in ids] + [fmt(r.domain_avg(IN_DOMAIN, "full"))] for r in runs
        ]
        parts += ["## Table 1: in-domain, full context (avg over lengths)", md_table(["model", *ids, "avg"], rows)]
    oods = list(dict.fromkeys(t for r in runs for t in r.tasks(OUT_OF_DOMAIN)))
    settings = list(dict.fromkeys(s for r in runs for s in r.settings()))
    if oods:
        other = [s for s in settings if s != "full"]
        head = ["model", *oods, "avg full", *[f"avg {s}" for s in other]]
        rows = [[name(r)] + [fmt(r.score(t, "full")) for t in oods]
                + [fmt(r.domain_avg(OUT_OF_DOMAIN, s)) for s in ["full", *other]] for r in runs]  # fmt: skip
        parts += ["## Table 2: out-of-domain (full context, compressed, RAG)", md_table(head, rows)]
    comp = [s for s in settings if any(r.setting_info().get(s, {}).get("kind") == "compression" for r in runs)]
    if comp:
        rows = [[name(r)] + [fmt(drop_table(r).get(s, {}).get(f"avg_{OUT_OF_DOMAIN}")) for s in comp] for r in runs]
        parts += [
            "## Table 3: % change of the out-of-domain average under compression",
            md_table(["model", *comp], rows),
        ]
    nd = {name(r): ndcg_table(r) for r in runs}
    if any(nd.values()):
        cols = list(dict.fromkeys(k for v in nd.values() for k in v))
        parts += ["## Table 4: attention NDCG@10", md_table(["model", *cols], [[m] + [fmt(v.get(c)) for c in cols]
                                                                              for m, v in nd.items()])]  # fmt: skip
    parts += _rag_sweep_md(base or runs[0], oods)
    if base is not None:
        rows = [[name(r)] + [fmt(r.domain_avg(d, "full") - base.domain_avg(d, "full")) for d in DOMAINS]
                + [fmt_ci(paired_gain_ci(r, base, r.tasks(IN_DOMAIN)))] for r in runs]  # fmt: skip
        head = ["model", "in-domain", "OOD", "in-domain, per example [paired 95% CI]"]
        parts += [f"## Gain over {base.label} (full context, points)", md_table(head, rows)]
    return "\n\n".join(parts) + "\n"


def _rag_sweep_md(run: Run, oods: list[str]) -> list[str]:
    info = run.setting_info()
    rag = [s for s in run.settings() if info[s]["kind"] == "rag"]
    if not rag or not oods:
        return []
    rows = [[s] + [fmt(run.score(t, s)) for t in oods] + [fmt(run.domain_avg(OUT_OF_DOMAIN, s))] for s in rag]
    rows.append(["full"] + [fmt(run.score(t, "full")) for t in oods] + [fmt(run.domain_avg(OUT_OF_DOMAIN, "full"))])
    return [f"## Table 10: RAG budget sweep ({run.label})", md_table(["setting", *oods, "avg"], rows)]


# ---- entry point -----------------------------------------------------------------------------------------------
def write_report(run_dirs: list[str | Path], out_dir: str | Path, baseline: str | Path | None = None) -> Path:
    """Write ``<out>/<label>/report.{md,json}`` + plots per run and ``<out>/summary.{md,json}`` + plots across;
    returns the summary Markdown path."""
    from lcrecipes.eval import plots

    out = Path(out_dir)
    runs = load_runs(list(run_dirs))
    base = load_runs([resolve_baseline(baseline, runs)])[0] if baseline is not None else None
    summaries = {}
    for run in runs:
        d = out / _safe(run.label)
        d.mkdir(parents=True, exist_ok=True)
        summ = run_summary(run, base)
        summaries[run.label] = summ
        (d / "report.md").write_text(run_markdown(run, summ))
        (d / "report.json").write_text(json.dumps(_clean(summ), indent=2, default=str))
        plots.score_vs_length([run], d / "score_vs_length.png")
        plots.score_vs_budget(run, d / "score_vs_budget.png")
    (out / "summary.md").write_text(summary_markdown(runs, base))
    (out / "summary.json").write_text(json.dumps(_clean(summaries), indent=2, default=str))
    plots.score_vs_length(runs, out / "score_vs_length.png")
    return out / "summary.md"


def resolve_baseline(baseline: str | Path, runs: list[Run]) -> Path:
    """The base model's eval run dir: ``baseline`` itself, or, given a model's ``eval/`` folder, its subfolder for
    the suite the compared runs used (so a recipe's ``eval.baseline`` holds whichever suite a run overrides)."""
    path = Path(baseline)
    if (path / PREDICTIONS).exists() or not runs:
        return path
    suite = runs[0].meta.get("suite_name")
    if suite and (path / suite / PREDICTIONS).exists():
        return path / suite
    raise ValueError(f"baseline {path}: neither an eval run dir nor an eval/ folder with a '{suite}' run "
                     "(run `lcr eval` on the base model with the same suite first)")


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.#" else "_" for c in label)


def _clean(x):
    """NaN -> None, recursively (strict JSON)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", help="eval run dirs (each with predictions.jsonl)")
    p.add_argument("--out", required=True, help="report dir")
    p.add_argument("--baseline", default=None, help="run dir of the base model (gains are measured against it)")


def main(args: argparse.Namespace) -> int:
    try:
        print(write_report(args.run_dirs, args.out, args.baseline))
    except ValueError as e:
        print(f"lcr report: {e}", file=sys.stderr)
        return 2
    return 0
