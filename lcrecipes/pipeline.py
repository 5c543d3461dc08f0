"""``lcr run RECIPE [RECIPE ...]``: prepare → train → convert → eval for each recipe, then one report.

Each stage runs as the same ``lcr`` verb a user would type (training under ``torchrun`` with the recipe's rank
count), and is skipped when its output exists and is valid for the recipe:
- prepare: data prep itself skips shards whose manifest matches the config and inputs (cheap to rerun);
- train: the latest checkpoint has reached ``train.steps``;
- convert: ``<run_dir>/hf`` was exported from that same checkpoint (``hf/lcr_source.json``);
- eval data: the suite's synthetic files exist;
- eval: the runner skips rows already written;
- report: always rewritten (it only reads rows).
So an interrupted study resumes where it stopped. A recipe with ``train.steps: 0`` (a base model evaluated as it
is, like the study's untuned Qwen) has no prepare, train or convert stage: its eval reads ``model.hf_path``, whose
directory also holds the tokenizer.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lcrecipes.config import Recipe, load_recipe

log = logging.getLogger(__name__)
SOURCE_MARKER = "lcr_source.json"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stage:
    """One step of a recipe's pipeline: ``done`` says whether its output is already valid."""

    name: str
    done: Callable[[Recipe], bool]
    command: Callable[[Recipe, list[str]], list[list[str]]]


def _lcr(*args: str) -> list[str]:
    return [sys.executable, "-m", "lcrecipes.cli", *args]


def latest_step(recipe: Recipe) -> tuple[int, Path | None]:
    """(step, dir) of the run's latest complete checkpoint, (0, None) when there is none."""
    from lcrecipes.checkpoint import CheckpointManager, read_state

    latest = CheckpointManager(Path(recipe.cfg.run_dir) / "checkpoints").latest()
    return (int(read_state(latest)["step"]), latest) if latest else (0, None)


def _untrained(recipe: Recipe) -> bool:
    return recipe.cfg.train.steps == 0


def _trained(recipe: Recipe) -> bool:
    return _untrained(recipe) or latest_step(recipe)[0] >= recipe.cfg.train.steps


def _train_cmd(recipe: Recipe, overrides: list[str]) -> list[list[str]]:
    n = recipe.cfg.launch.world_size
    args = ["train", str(recipe.path), *overrides]
    if n == 1:
        return [_lcr(*args)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={n}",
                f"--master_port={_free_port()}", "-m", "lcrecipes.cli"]
    return [torchrun + args]


def _exported(recipe: Recipe) -> bool:
    if _untrained(recipe):
        return True
    marker = Path(recipe.cfg.run_dir) / "hf" / SOURCE_MARKER
    if not marker.is_file():
        return False
    step, ckpt = latest_step(recipe)
    return ckpt is not None and json.loads(marker.read_text()).get("checkpoint") == str(ckpt.resolve())


def _convert_cmd(recipe: Recipe, overrides: list[str]) -> list[list[str]]:
    _, ckpt = latest_step(recipe)
    backend = recipe.cfg.parallel.backend
    return [_lcr("convert", "--from", backend, "--to", "hf", str(ckpt), str(Path(recipe.cfg.run_dir) / "hf"),
                 "--overwrite", "--tokenizer", _tokenizer(recipe))]


def _eval_data_ready(recipe: Recipe) -> bool:
    from lcrecipes.eval.suite import load_suite

    suite = load_suite(recipe.cfg.eval.suite)
    return all(path.exists() for spec in suite.tasks for _, path in spec.files())


def _tokenizer(recipe: Recipe) -> str:
    from lcrecipes.data.prepare import manifest_tokenizer

    if _untrained(recipe):
        return str(recipe.cfg.model.hf_path)
    return manifest_tokenizer(Path(recipe.cfg.data.out_dir) / "train")


def _eval_data_cmd(recipe: Recipe, overrides: list[str]) -> list[list[str]]:
    script = Path(__file__).resolve().parents[1] / "eval" / "make_synthetic_sets.py"
    return [[sys.executable, str(script), str(recipe.path), "--suite", str(recipe.cfg.eval.suite),
             "--tokenizer", _tokenizer(recipe), *(f"--set={o}" for o in overrides)]]


def _eval_cmd(recipe: Recipe, overrides: list[str]) -> list[list[str]]:
    cfg = recipe.cfg
    model = cfg.eval_model_dir()
    return [_lcr("eval", model, "--suite", str(cfg.eval.suite), "--strategy", cfg.eval.strategy or cfg.strategy.name,
                 "--out", str(eval_dir(recipe)), "--label", cfg.name.replace("/", "-"),
                 *(["--threads", str(cfg.eval.threads)] if cfg.eval.threads else []))]


STAGES: list[Stage] = [
    Stage("prepare", _untrained, lambda r, o: [_lcr("prepare", str(r.path), *o)]),
    Stage("train", _trained, _train_cmd),
    Stage("convert", _exported, _convert_cmd),
    Stage("eval data", _eval_data_ready, _eval_data_cmd),
    Stage("eval", lambda r: False, _eval_cmd),
]


@dataclass
class StageResult:
    recipe: str
    stage: str
    skipped: bool
    seconds: float = 0.0
    commands: list[str] = field(default_factory=list)


class StageFailed(RuntimeError):
    pass


def _run_commands(cmds: list[list[str]], env: dict) -> None:
    for cmd in cmds:
        log.info("$ %s", " ".join(cmd))
        rc = subprocess.run(cmd, env=env).returncode
        if rc != 0:
            raise StageFailed(f"command failed with exit code {rc}: {' '.join(cmd)}")


def run_recipe(recipe: Recipe, overrides: list[str], env: dict) -> list[StageResult]:
    """Run each stage of one recipe that is not done yet; returns what ran and what was skipped."""
    out = []
    for stage in STAGES:
        if stage.name.startswith("eval") and not recipe.cfg.eval.suite:
            continue
        if stage.done(recipe):
            log.info("[%s] %s: done, skipped", recipe.cfg.name, stage.name)
            out.append(StageResult(recipe.cfg.name, stage.name, skipped=True))
            continue
        log.info("[%s] %s ...", recipe.cfg.name, stage.name)
        t0 = time.perf_counter()
        cmds = stage.command(recipe, overrides)
        _run_commands(cmds, env)
        if stage.name == "convert":
            _write_source_marker(recipe)
        out.append(StageResult(recipe.cfg.name, stage.name, False, time.perf_counter() - t0,
                               [" ".join(c) for c in cmds]))
    return out


def _write_source_marker(recipe: Recipe) -> None:
    from lcrecipes.utils.io import atomic_write_text

    _, ckpt = latest_step(recipe)
    marker = Path(recipe.cfg.run_dir) / "hf" / SOURCE_MARKER
    atomic_write_text(marker, json.dumps({"checkpoint": str(ckpt.resolve())}) + "\n")


def eval_dir(recipe: Recipe) -> Path:
    from lcrecipes.eval.suite import load_suite

    cfg = recipe.cfg
    return Path(cfg.eval.out_dir or Path(cfg.run_dir) / "eval" / load_suite(cfg.eval.suite).name)


def run_study(recipe_paths: list[str], overrides: list[str], report_dir: str | None,
              extra: dict[str, list[str]] | None = None) -> list[StageResult]:
    """Run every recipe's pipeline in order, then write one report over all their eval runs. ``extra`` maps a
    recipe path to overrides for that recipe only (after ``overrides``)."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    own = [[*overrides, *(extra or {}).get(p, [])] for p in recipe_paths]
    recipes = [load_recipe(p, o) for p, o in zip(recipe_paths, own)]  # validate every recipe before running any
    results = []
    for recipe, o in zip(recipes, own):
        results += run_recipe(recipe, o, env)
    evals = [str(eval_dir(r)) for r in recipes if r.cfg.eval.suite]
    if report_dir and evals:
        baseline = next((r.cfg.eval.baseline for r in recipes if r.cfg.eval.baseline), None)
        cmd = _lcr("report", *evals, "--out", report_dir, *(["--baseline", baseline] if baseline else []))
        _run_commands([cmd], env)
        print_headline(Path(report_dir) / "summary.md")
    return results


def run_and_print(run: Callable[[], list[StageResult]], prog: str) -> int:
    """Exit code of a study run by ``run()``: 1 with the failed command on stderr, else 0 after one line counting the
    stages that ran and were skipped (what ``lcr run`` and ``lcr demo`` print)."""
    try:
        results = run()
    except StageFailed as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    ran = sum(not r.skipped for r in results)
    print(f"lcr run: {ran} stage(s) ran, {len(results) - ran} skipped")
    return 0


def print_headline(summary: Path) -> None:
    """Print where the report is and its first table (the study's Table 1 shape)."""
    lines = summary.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    print(f"\nreport: {summary}")
    if start is not None:
        end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
        print("\n".join(lines[max(start - 2, 0):end]))
