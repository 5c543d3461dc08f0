"""Run a suite on one HF model: one JSONL row per (task, length, example, setting), resumable.

    lcr eval runs/tiny/hf --suite eval/suites/tiny_cpu.yaml --strategy doc_ids --out runs/tiny/eval/tiny_cpu
    lcr eval recipes/tiny_cpu/doc_ids.yaml        # suite, HF dir, strategy and out dir from the recipe

Rows go to ``<out>/predictions.jsonl``, each flushed and fsynced as soon as it is written; a rerun reads the rows
already there (repairing a last line cut by a kill) and runs only the missing ones, so a killed run loses at most
the row in flight and never duplicates one. ``<out>/run.json`` records the model, strategy, suite and versions;
a rerun with another model or strategy in the same directory is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from lcrecipes.eval.context import EncodedPrompt, encode_prompt, truncate_example
from lcrecipes.eval.metrics import METRICS, Judge
from lcrecipes.eval.rag import get_retriever
from lcrecipes.eval.rag.chunking import cut_to_budget, rank_chunks
from lcrecipes.eval.suite import EvalSuite, SuiteError, TaskSpec, load_suite
from lcrecipes.eval.tasks import EvalItem, SchemaError, Task, get_task

log = logging.getLogger(__name__)
PREDICTIONS = "predictions.jsonl"


class EvalError(ValueError):
    """A user-facing problem with an eval invocation (wrong run dir, missing option)."""


@dataclass(frozen=True)
class Setting:
    """How the model sees a context: ``full``, ``compression`` (method × budget × mode) or ``rag`` (× budget)."""

    kind: str
    method: str = "none"
    budget: int | None = None
    mode: str | None = None
    retriever: str | None = None
    chunk_tokens: int | None = None
    params: tuple = ()  # (key, value) pairs: compression-method parameters or retriever options

    @property
    def name(self) -> str:
        if self.kind == "compression":
            return f"{self.method}@{self.budget}:{self.mode}"
        if self.kind == "rag":
            return f"rag_{self.retriever}@{self.budget}"
        return "full"


def expand_settings(suite: EvalSuite) -> list[Setting]:
    """Every setting of the suite, in a fixed order: full, compression (method, budget, mode), rag."""
    from lcrecipes.eval.compression import get_method

    out = [Setting("full")] if suite.settings.full else []
    for c in suite.settings.compression:
        modes = c.modes or list(get_method(c.method, **c.params).modes)
        out += [Setting("compression", c.method, b, m, params=tuple(sorted(c.params.items())))
                for b in c.budgets for m in modes]  # fmt: skip
    for r in suite.settings.rag:
        opts = {"batch_size": suite.batch_size, **({"model": r.model} if r.model else {})}
        out += [Setting("rag", "none", b, None, r.retriever, r.chunk_tokens, tuple(sorted(opts.items())))
                for b in r.budgets]  # fmt: skip
    return out


# ---- the row store ---------------------------------------------------------------------------------------------
def row_key(task: str, length: int | None, uid: str, setting: str) -> str:
    return f"{task}|{length if length is not None else '-'}|{uid}|{setting}"


class RowStore:
    """Append-only JSONL of rows keyed by ``row["key"]``; every append is flushed and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.done: set[str] = set()
        if self.path.exists():
            self._repair_and_read()
        self._fh = self.path.open("a", encoding="utf-8")

    def _repair_and_read(self) -> None:
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1  # a row is complete only with its newline
        if good < len(data):
            log.warning("%s: dropping a partial last row (%d bytes) left by an interrupted run",
                        self.path, len(data) - good)  # fmt: skip
            with self.path.open("r+b") as fh:
                fh.truncate(good)
                fh.flush()
                os.fsync(fh.fileno())
        for n, line in enumerate(data[:good].decode("utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    self.done.add(json.loads(line)["key"])
                except (json.JSONDecodeError, KeyError) as e:
                    raise ValueError(f"{self.path}:{n}: not a prediction row ({e})") from e

    def append(self, row: dict) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done.add(row["key"])

    def close(self) -> None:
        self._fh.close()


def read_rows(run_dir: str | Path) -> list[dict]:
    """The complete rows of a run dir (a partial last line is ignored)."""
    path = Path(run_dir) / PREDICTIONS
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    return [json.loads(ln) for ln in lines if ln.strip()]


# ---- planning --------------------------------------------------------------------------------------------------
@dataclass
class Planned:
    spec: TaskSpec
    task: Task
    item: EvalItem


def plan_items(suite: EvalSuite) -> list[Planned]:
    """Every (task, length, example) of the suite, loaded and checked before any model is loaded."""
    out = []
    for spec in suite.tasks:
        task = get_task(spec.name, **spec.options)
        limit = spec.limit if spec.limit is not None else suite.limit
        for length, path in spec.files(task.k_of_length):
            seen: dict[str, int] = {}
            for item in task.load(path, length, limit):
                seen[item.uid] = seen.get(item.uid, 0) + 1
                if seen[item.uid] > 1:  # e.g. HELMET NQ repeats questions; keep rows distinct
                    item.uid = f"{item.uid}#{seen[item.uid]}"
                out.append(Planned(spec, task, item))
    return out


def pending(plan: list[Planned], settings: list[Setting], done: set[str]) -> Iterator[tuple[Planned, Setting]]:
    for p in plan:
        for s in settings:
            if s.kind in p.spec.kinds and row_key(p.task.name, p.item.length, p.item.uid, s.name) not in done:
                yield p, s


# ---- one row ---------------------------------------------------------------------------------------------------
class Evaluator:
    """Holds the model, tokenizer, strategy and caches; :meth:`row` evaluates one (item, setting)."""

    def __init__(self, model, tokenizer, strategy, suite: EvalSuite, judge: Judge | None, meta: dict) -> None:
        self.model, self.tok, self.strategy, self.suite, self.judge, self.meta = (
            model, tokenizer, strategy, suite, judge, meta)  # fmt: skip
        self._rank_cache: dict[tuple, tuple] = {}

    def row(self, p: Planned, s: Setting) -> dict:
        t0 = time.perf_counter()
        example, info = self._context(p, s)
        enc = encode_prompt(self.tok, self.strategy.prompt(example), example.docs)
        res, measures = self._generate(p, s, enc)
        row = self._base(p, s) | info | self._score(p, example, res.text) | measures
        if s.kind == "rag":
            row["n_kept_tokens"] = info["rag"]["n_kept_tokens"]
        if self.suite.attention_ndcg and s.kind == "full":
            row |= self._ndcg(enc, res.output_ids, example.gold)
        row["wall_s"] = time.perf_counter() - t0
        return row

    def _generate(self, p: Planned, s: Setting, enc: EncodedPrompt):
        """Greedy generation under the setting's method: ``(GenerationResult, measured fields of the row)``."""
        from lcrecipes.eval.compression import get_method, memory_claim_holds

        method = get_method(s.method, **(dict(s.params) if s.kind == "compression" else {}))
        budget = s.budget if s.kind == "compression" else 1.0
        max_new = p.spec.max_new_tokens or self.suite.max_new_tokens or p.task.max_new_tokens or 64
        res = method.generate(self.model, self.tok, enc.context_ids, enc.question_ids, budget,
                              s.mode or "query_aware", max_new)  # fmt: skip
        n_ctx = res.n_context_tokens
        return res, {
            "n_context_tokens": n_ctx, "n_question_tokens": len(enc.question_ids),
            "n_output_tokens": len(res.output_ids),
            "n_kept_tokens": min(s.budget, n_ctx) if s.kind == "compression" else n_ctx,
            "kv_bytes_full": res.kv_bytes_full, "kv_bytes_kept": res.kv_bytes_kept,
            "memory_claim_ok": memory_claim_holds(method, res, budget), "frees_memory": method.frees_memory,
            "peak_rss_bytes": res.peak_rss_bytes, "prefill_s": res.prefill_s, "decode_s": res.decode_s,
        }  # fmt: skip

    def _context(self, p: Planned, s: Setting):
        ex = p.item.example
        if s.kind == "rag":
            key = (p.task.name, p.item.length, p.item.uid, s.retriever, s.chunk_tokens)
            if key not in self._rank_cache:
                retriever = get_retriever(s.retriever, **dict(s.params))
                self._rank_cache = {key: rank_chunks(ex, self.tok, retriever, s.chunk_tokens)}
            new, info = cut_to_budget(ex, *self._rank_cache[key], self.tok, s.budget)
            return new, {"rag": info, "truncated": False}
        max_ctx = p.spec.max_context_tokens or self.suite.max_context_tokens
        new, before, after = truncate_example(ex, self.tok, max_ctx, self.suite.truncation)
        return new, {"truncated": after < before, "n_doc_tokens_before": before, "n_doc_tokens": after}

    def _base(self, p: Planned, s: Setting) -> dict:
        return self.meta | {
            "key": row_key(p.task.name, p.item.length, p.item.uid, s.name), "task": p.task.name,
            "domain": p.task.domain, "metric": p.task.metric, "length": p.item.length, "uid": p.item.uid,
            "setting": s.name, "kind": s.kind, "method": s.method, "budget": s.budget, "mode": s.mode,
            "retriever": s.retriever, "meta": p.item.meta,
        }  # fmt: skip

    def _score(self, p: Planned, example, output: str) -> dict:
        parsed = self.strategy.parse(output)
        text = parsed.answer if parsed.answer is not None else output
        item = EvalItem(p.item.task, p.item.uid, example, p.item.length, p.item.reference, p.item.meta)
        score = METRICS[p.task.metric](text, item, self.judge)
        strat = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                 for k, v in self.strategy.score(output, example).items()}  # fmt: skip
        out = {"prediction": output, "parsed": asdict(parsed), "score": score, "scores": strat}
        if p.task.metric == "judge" and self.judge is not None and self.judge.last is not None:
            out["judge"] = {"rating": self.judge.last[0], "output": self.judge.last[1]}
        return out

    def _ndcg(self, enc: EncodedPrompt, output_ids: list[int], gold: list[int]) -> dict:
        from lcrecipes.eval.analysis import attention_ndcg

        prompt = enc.context_ids + enc.question_ids
        ndcg, _ = attention_ndcg(self.model, prompt, output_ids, enc.doc_spans, gold)
        return {"attn_ndcg10": None if math.isnan(ndcg) else ndcg}


# ---- the run ---------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_model(model_dir: str | Path, dtype: str = "float32"):
    """``(model, tokenizer)`` from a local HF dir (no hub access), in eval mode, on CUDA when present."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor bar per model load; the eval has its own per-row bar
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), local_files_only=True, dtype=getattr(torch, dtype), attn_implementation="sdpa"
    )
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tok


def generation_settings(suite: EvalSuite) -> dict:
    """The suite fields that change what an existing row would contain (not which rows exist, as limits, tasks
    and settings do): a resumed run must use the same ones or its rows would mix two evaluations."""
    keys = ("seed", "max_new_tokens", "max_context_tokens", "truncation", "dtype")
    return {k: getattr(suite, k) for k in keys} | {"task_max_new_tokens": {t.name: t.max_new_tokens for t in
                                                                            suite.tasks if t.max_new_tokens}}


def _check_run_meta(out: Path, meta: dict) -> None:
    path = out / "run.json"
    if path.exists():
        old = json.loads(path.read_text())
        for k in ("model_dir", "strategy", "suite_name"):
            if old.get(k) != meta.get(k):
                raise EvalError(f"{path}: this run dir holds {k}={old.get(k)!r}, not {meta.get(k)!r}; "
                                 "use another --out")  # fmt: skip
        before, now = old.get("generation", meta["generation"]), meta["generation"]
        for k in now:
            if before.get(k) != now[k]:
                raise EvalError(f"{path}: its rows were generated with suite {k}={before.get(k)!r}, the suite now "
                                f"says {now[k]!r}; resuming would mix the two (use another --out or delete it)")


def _write_run_meta(out: Path, meta: dict, suite: EvalSuite) -> None:
    from lcrecipes.utils.io import atomic_write_text
    from lcrecipes.utils.provenance import environment_info

    doc = meta | {"suite": asdict(suite), "environment": environment_info()}
    atomic_write_text(out / "run.json", json.dumps(doc, indent=2, default=str))


def run_eval(
    model_dir: str | Path,
    suite: EvalSuite | str | Path,
    strategy_name: str,
    out_dir: str | Path,
    *,
    label: str | None = None,
    judge: Judge | None = None,
    on_row: Callable[[dict], None] | None = None,
    threads: int | None = None,
) -> Path:
    """Evaluate ``model_dir`` on ``suite`` with ``strategy_name``'s prompts and parser; returns the JSONL path.

    ``label`` names the model in reports (default: :func:`default_label`); ``judge`` overrides the suite's judge;
    ``on_row`` is called after each row is durably written; ``threads`` sets torch's CPU intra-op threads (a tiny
    model on a shared CPU is many times faster with 1 than with an oversubscribed pool).
    """
    from tqdm import tqdm

    from lcrecipes.strategies import get_strategy

    suite = suite if isinstance(suite, EvalSuite) else load_suite(suite)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": label or default_label(model_dir), "model_dir": str(Path(model_dir).resolve()),
            "strategy": strategy_name, "suite_name": suite.name, "seed": suite.seed,
            "generation": generation_settings(suite)}  # fmt: skip
    _check_run_meta(out, meta)
    strategy = get_strategy(strategy_name)
    plan, settings = plan_items(suite), expand_settings(suite)
    store = RowStore(out / PREDICTIONS)
    todo = list(pending(plan, settings, store.done))
    _write_run_meta(out, meta, suite)
    log.info("%s: %d rows done, %d to run", out, len(store.done), len(todo))
    if todo:
        if threads is not None:
            from lcrecipes.launch.env import set_cpu_threads

            set_cpu_threads(threads)
        seed_everything(suite.seed)
        model, tok = load_model(model_dir, suite.dtype)
        judge = judge or _suite_judge(suite, plan)
        ev = Evaluator(model, tok, strategy, suite, judge, meta)
        for p, s in tqdm(todo, desc=f"eval {meta['model']}", unit="row", disable=None):
            row = ev.row(p, s)
            store.append(row)
            if on_row is not None:
                on_row(row)
    store.close()
    return out / PREDICTIONS


def default_label(model_dir: str | Path) -> str:
    """The model dir's name, or its parent's for a recipe's export dir ``<run_dir>/hf``."""
    p = Path(model_dir).resolve()
    return p.parent.name if p.name == "hf" else p.name


def _suite_judge(suite: EvalSuite, plan: list[Planned]) -> Judge | None:
    if suite.judge is None or not any(p.task.metric == "judge" for p in plan):
        return None
    from lcrecipes.eval.metrics import HFJudge

    return HFJudge(suite.judge.hf_dir, suite.judge.max_new_tokens, suite.dtype)


# ---- command line ----------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="RECIPE|HF_DIR", help="a recipe YAML (its eval section) or an HF model dir")
    p.add_argument("--suite", default=None, help="eval/suites/<name>.yaml (default: the recipe's eval.suite)")
    p.add_argument("--strategy", default=None, help="output strategy (default: the recipe's strategy.name)")
    p.add_argument("--out", default=None, help="run dir for predictions.jsonl (default: <run_dir>/eval/<suite>)")
    p.add_argument("--model", default=None, help="with a recipe: HF dir (default: eval.hf_dir, else <run_dir>/hf)")
    p.add_argument("--label", default=None, help="model name in reports (default: recipe name or model dir name)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU intra-op threads (default: the recipe's eval.threads, else torch's default)")


def resolve_target(args: argparse.Namespace) -> tuple[str, str, str, str, str | None, int | None]:
    """``(model dir, suite, strategy, out dir, label, threads)`` from an HF dir plus options, or a recipe's."""
    target = Path(args.target)
    if target.suffix in (".yaml", ".yml") and target.is_file():
        from lcrecipes.config import load_recipe

        cfg = load_recipe(target).cfg
        suite = args.suite or cfg.eval.suite
        if suite is None:
            raise EvalError(f"{target}: no eval suite: set eval.suite or pass --suite")
        model = args.model or cfg.eval_model_dir()
        out = args.out or str(Path(cfg.run_dir) / "eval" / load_suite(suite).name)
        label = args.label or cfg.name.replace("/", "-")
        return model, suite, args.strategy or cfg.strategy.name, out, label, args.threads or cfg.eval.threads
    missing = [k for k in ("suite", "strategy", "out") if getattr(args, k) is None]
    if missing:
        raise EvalError(f"with an HF dir, pass --{', --'.join(missing)}")
    return str(target), args.suite, args.strategy, args.out, args.label, args.threads


def main(args: argparse.Namespace) -> int:
    try:
        model, suite, strategy, out, label, threads = resolve_target(args)
        print(run_eval(model, suite, strategy, out, label=label, threads=threads))
    except (EvalError, SuiteError, SchemaError, FileNotFoundError) as e:
        print(f"lcr eval: {e}", file=sys.stderr)
        return 2
    return 0
