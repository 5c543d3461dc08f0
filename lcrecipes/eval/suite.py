"""Eval suites: which tasks (files, lengths), which settings (full context, KV compression method × budget × mode,
RAG retriever × budget), and the limits every run of the suite shares.

A suite is a YAML file under ``eval/suites/``; :func:`load_suite` turns it into an :class:`EvalSuite`. Unknown keys
and wrong types are errors that name the file and the dotted key (``tasks[1].lengths[0]``).

Budgets are token counts (kept KV entries for compression, kept chunk tokens for RAG), so a compression method and
RAG at the same budget keep the same number of context tokens.
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

TRUNCATION_SIDES = ("middle", "end")
SETTING_KINDS = ("full", "compression", "rag")


class SuiteError(ValueError):
    """A suite file that does not match the schema; the message names the file and the dotted key."""


@dataclass
class TaskSpec:
    """One task of a suite.

    ``path`` may hold ``{length}`` (the nominal context length in tokens) and ``{k}`` (the task's own file key for
    that length, e.g. HELMET's number of passages). ``lengths`` empty means one file with no length sweep.
    """

    name: str
    path: str
    lengths: list[int] = field(default_factory=list)
    limit: int | None = None  # examples per (task, length); None = the suite's limit
    max_new_tokens: int | None = None  # None = the suite's, else the task's default
    kinds: list[str] = field(default_factory=lambda: list(SETTING_KINDS))  # which settings apply to this task
    max_context_tokens: int | None = None  # None = the suite's
    options: dict[str, Any] = field(default_factory=dict)  # task-specific (e.g. doc_dir for Loong)

    def files(self, k_of_length: dict[int, int] | None = None) -> list[tuple[int | None, Path]]:
        """``[(length or None, path)]`` for every length of this task."""
        if not self.lengths:
            return [(None, Path(self.path))]
        k_of_length = k_of_length or {}
        return [(n, Path(self.path.format(length=n, k=k_of_length.get(n, n)))) for n in self.lengths]


@dataclass
class CompressionSpec:
    """One KV compression method, run at every budget × mode."""

    method: str
    budgets: list[int]
    modes: list[str] = field(default_factory=list)  # empty = every mode the method declares
    params: dict[str, Any] = field(default_factory=dict)  # method parameters (e.g. a press's window_size)


@dataclass
class RagSpec:
    """One retriever: chunks of ``chunk_tokens`` ranked against the question, kept in rank order up to a budget."""

    retriever: str
    budgets: list[int]
    chunk_tokens: int = 2048
    model: str | None = None  # dense retriever model dir; None = the retriever's offline default


@dataclass
class SettingsSpec:
    full: bool = True
    compression: list[CompressionSpec] = field(default_factory=list)
    rag: list[RagSpec] = field(default_factory=list)


@dataclass
class JudgeSpec:
    """A local HF model used as LLM judge (Loong's 0–100 score)."""

    hf_dir: str
    max_new_tokens: int = 256


@dataclass
class EvalSuite:
    name: str
    tasks: list[TaskSpec]
    settings: SettingsSpec = field(default_factory=SettingsSpec)
    seed: int = 0
    limit: int | None = None  # examples per (task, length)
    max_new_tokens: int | None = None  # None = each task's default (64 if it has none); tasks[i].max_new_tokens wins
    max_context_tokens: int = 131072  # context budget (tokens) before truncation
    truncation: str = "middle"  # middle | end: which part of an over-long context is cut
    batch_size: int = 32  # encode batch of the dense retriever; generation is one example at a time
    dtype: str = "float32"  # float32 | bfloat16 | float16
    attention_ndcg: bool = False  # attention NDCG@10 on full-context rows of tasks with gold documents
    judge: JudgeSpec | None = None
    source: str = "<memory>"  # the file it was read from

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.truncation not in TRUNCATION_SIDES:
            out.append(("truncation", f"must be one of {list(TRUNCATION_SIDES)}, got {self.truncation!r}"))
        if self.dtype not in ("float32", "bfloat16", "float16"):
            out.append(("dtype", f"must be float32, bfloat16 or float16, got {self.dtype!r}"))
        for key in ("max_new_tokens", "max_context_tokens", "batch_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                out.append((key, f"must be >= 1, got {getattr(self, key)}"))
        if not self.tasks:
            out.append(("tasks", "at least one task is needed"))
        out += self._task_problems() + self._setting_problems()
        return out

    def _task_problems(self) -> list[tuple[str, str]]:
        from lcrecipes.eval.tasks import TASKS

        out, seen = [], set()
        for i, t in enumerate(self.tasks):
            if t.name not in TASKS:
                out.append((f"tasks[{i}].name", f"unknown task {t.name!r}; known: {sorted(TASKS)}"))
            elif TASKS[t.name].metric == "judge" and self.judge is None:
                out.append(("judge", f"task {t.name!r} is scored by an LLM judge; set judge.hf_dir"))
            if t.lengths and "{length}" not in t.path and "{k}" not in t.path:
                out.append((f"tasks[{i}].path", "has lengths but no {length} or {k} placeholder"))
            if set(t.kinds) - set(SETTING_KINDS):
                out.append((f"tasks[{i}].kinds", f"must be a subset of {list(SETTING_KINDS)}, got {t.kinds}"))
            if t.name in seen:
                out.append((f"tasks[{i}].name", f"task {t.name!r} listed twice"))
            seen.add(t.name)
        return out

    def _setting_problems(self) -> list[tuple[str, str]]:
        from lcrecipes.eval.rag import RETRIEVERS

        out = []
        if self.settings.compression:  # importing the methods imports torch and kvpress
            from lcrecipes.eval.compression import METHODS
        for i, c in enumerate(self.settings.compression):
            if c.method not in METHODS:
                out.append((f"settings.compression[{i}].method", f"unknown {c.method!r}; known: {sorted(METHODS)}"))
            elif set(c.modes) - set(METHODS[c.method].modes):
                bad = sorted(set(c.modes) - set(METHODS[c.method].modes))
                out.append((f"settings.compression[{i}].modes", f"{bad} not among {list(METHODS[c.method].modes)}"))
            if not c.budgets or min(c.budgets) < 1:
                out.append((f"settings.compression[{i}].budgets", "need one or more budgets >= 1 (tokens)"))
        for i, r in enumerate(self.settings.rag):
            if r.retriever not in RETRIEVERS:
                out.append((f"settings.rag[{i}].retriever", f"unknown {r.retriever!r}; known: {sorted(RETRIEVERS)}"))
            if not r.budgets or min(r.budgets) < 1:
                out.append((f"settings.rag[{i}].budgets", "need one or more budgets >= 1 (tokens)"))
            if r.chunk_tokens < 1:
                out.append((f"settings.rag[{i}].chunk_tokens", "must be >= 1"))
        return out


@dataclass
class EvalConfig:
    """What a recipe's ``eval`` section holds to run ``lcr eval`` and ``lcr report`` on its model."""

    suite: str | None = None  # eval/suites/<name>.yaml
    hf_dir: str | None = None  # the HF model dir to evaluate (default: the recipe's converted checkpoint)
    out_dir: str | None = None  # where predictions.jsonl goes (default: <run_dir>/eval/<suite name>)
    strategy: str | None = None  # output strategy to prompt and parse with (default: the recipe's)
    baseline: str | None = None  # eval run dir of the base model, for gains in the report
    threads: int | None = None  # CPU intra-op threads for the model (None: torch's default, one per core)

    def problems(self) -> list[tuple[str, str]]:
        out = [] if self.threads is None or self.threads >= 1 else [("eval.threads", "must be >= 1 or null")]
        if self.suite is not None and not Path(self.suite).is_file():
            out.append(("eval.suite", f"no such suite file: {self.suite}"))
        return out


def load_suite(path: str | Path) -> EvalSuite:
    """Read and validate a suite YAML; raises :class:`SuiteError` naming the file and key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SuiteError(f"{path}: cannot read suite: {e}") from e
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: a suite is a mapping, got {type(data).__name__}")
    suite = build(EvalSuite, {**data, "source": str(path)}, "", path)
    bad = suite.problems()
    if bad:
        raise SuiteError("\n".join(f"{path}: {k}: {m}" for k, m in bad))
    return suite


def build(cls: type, data: Any, key: str, file: Path | str) -> Any:
    """Build dataclass ``cls`` from ``data``, checking keys and types; errors name ``file`` and dotted ``key``."""
    if not isinstance(data, dict):
        raise SuiteError(f"{file}: {key or '<top>'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise SuiteError(f"{file}: {_join(key, unknown[0])}: unknown key (known: {sorted(known)})")
    kwargs = {}
    for name, f in known.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _join(key, name), file)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise SuiteError(f"{file}: {_join(key, name)}: required key missing")
    return cls(**kwargs)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _convert(tp: Any, value: Any, key: str, file: Path | str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, key, file)
    if origin is list:
        if not isinstance(value, list):
            raise SuiteError(f"{file}: {key}: expected a list, got {type(value).__name__}")
        return [_convert(args[0], v, f"{key}[{i}]", file) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SuiteError(f"{file}: {key}: expected a mapping, got {type(value).__name__}")
        return {_convert(args[0], k, key, file): _convert(args[1], v, f"{key}.{k}", file) for k, v in value.items()}
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        return build(tp, value, key, file)
    return _scalar(tp, value, key, file)


def _scalar(tp: Any, value: Any, key: str, file: Path | str) -> Any:
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise SuiteError(f"{file}: {key}: expected {tp.__name__}, got {type(value).__name__} ({value!r})")
    return value
