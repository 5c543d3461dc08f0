"""An eval suite as a job array: one array task per (task, setting) slice, rows merged when all are done.

    python -m lcrecipes.launch.eval_array count eval/suites/tiny_cpu.yaml                 # -> N slices
    python -m lcrecipes.launch.eval_array run MODEL --suite S --strategy X --out OUT --index I
    python -m lcrecipes.launch.eval_array merge --suite S --out OUT

``slurm/eval.sh`` runs ``run`` with ``--index $SLURM_ARRAY_TASK_ID``; ``lcr launch RECIPE --eval --submitit``
submits :class:`EvalSliceJob` with ``executor.map_array``. Slice ``i`` runs ``lcrecipes.eval.runner.run_eval`` on a
suite cut down to its one task and one setting, in ``OUT/slices/<i>/`` (resumable like any eval run, and never
two writers on one file). Row keys are those of a whole-suite run, so merging is a union by key: ``OUT`` then
holds ``predictions.jsonl`` and ``run.json`` exactly as ``lcr eval`` would have written them, and a later
``lcr eval ... --out OUT`` or ``lcr report OUT`` works on it. Each finished slice tries the merge; the last one
to finish completes it (the merge is idempotent and written atomically).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lcrecipes.eval.runner import PREDICTIONS, Setting, expand_settings, read_rows, run_eval
from lcrecipes.eval.suite import CompressionSpec, EvalSuite, RagSpec, SettingsSpec, load_suite
from lcrecipes.utils.io import atomic_write_text

log = logging.getLogger(__name__)
DONE = "DONE"  # written in a slice dir once its run_eval has returned


@dataclass(frozen=True)
class Slice:
    """Array task ``index``: task ``suite.tasks[task_index]`` (named ``task``) under one ``setting``."""

    index: int
    task_index: int
    task: str
    setting: Setting

    @property
    def name(self) -> str:
        return f"{self.task}/{self.setting.name}"


def eval_slices(suite: EvalSuite) -> list[Slice]:
    """Every (task, setting) of the suite that the task accepts (``TaskSpec.kinds``), in a fixed order."""
    settings = expand_settings(suite)
    pairs = [(i, t.name, s) for i, t in enumerate(suite.tasks) for s in settings if s.kind in t.kinds]
    return [Slice(n, i, name, s) for n, (i, name, s) in enumerate(pairs)]


def _settings_of(s: Setting) -> SettingsSpec:
    if s.kind == "full":
        return SettingsSpec(full=True)
    if s.kind == "compression":
        return SettingsSpec(full=False, compression=[CompressionSpec(s.method, [s.budget], [s.mode], dict(s.params))])
    model = dict(s.params).get("model")
    return SettingsSpec(full=False, rag=[RagSpec(s.retriever, [s.budget], s.chunk_tokens, model)])


def slice_suite(suite: EvalSuite, sl: Slice) -> EvalSuite:
    """The suite cut down to the slice's task and setting; checked to expand to exactly that one setting."""
    sub = replace(suite, tasks=[suite.tasks[sl.task_index]], settings=_settings_of(sl.setting))
    got = expand_settings(sub)
    if got != [sl.setting]:
        raise ValueError(f"{suite.source}: slice {sl.index} ({sl.name}) expands to {[s.name for s in got]}")
    return sub


def slice_dir(out: str | Path, index: int) -> Path:
    return Path(out) / "slices" / f"{index:04d}"


def run_slice(model: str | Path, suite_path: str | Path, strategy: str, out: str | Path, index: int,
              label: str | None = None) -> Path:
    """Evaluate slice ``index`` into ``OUT/slices/<index>/``; returns that dir (marked done)."""
    suite = load_suite(suite_path)
    slices = eval_slices(suite)
    if not 0 <= index < len(slices):
        raise IndexError(f"{suite_path}: slice index {index} outside [0, {len(slices)}) (array too large?)")
    sl, d = slices[index], slice_dir(out, index)
    log.info("slice %d/%d: %s -> %s", index, len(slices), sl.name, d)
    run_eval(model, slice_suite(suite, sl), strategy, d, label=label)  # None: the runner's default label
    atomic_write_text(d / DONE, sl.name + "\n")
    return d


@dataclass(frozen=True)
class Merged:
    path: Path
    n_rows: int
    n_slices: int


def merge_slices(out: str | Path, suite_path: str | Path) -> Merged | None:
    """Union (by row key) of every slice's rows and any rows already in ``OUT``; None while a slice is unfinished."""
    suite, out = load_suite(suite_path), Path(out)
    dirs = [slice_dir(out, sl.index) for sl in eval_slices(suite)]
    pending = [d.name for d in dirs if not (d / DONE).exists()]
    if pending:
        log.info("%s: %d of %d slices unfinished (%s); not merging yet", out, len(pending), len(dirs),
                 ", ".join(pending[:5]))
        return None
    rows: dict[str, dict] = {}
    for d in [out, *dirs]:
        for row in read_rows(d):
            rows.setdefault(row["key"], row)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.values())
    atomic_write_text(out / PREDICTIONS, text)
    meta = json.loads((dirs[0] / "run.json").read_text())
    atomic_write_text(out / "run.json", json.dumps(meta | {"suite": asdict(suite)}, indent=2, default=str))
    log.info("%s: merged %d rows from %d slices", out / PREDICTIONS, len(rows), len(dirs))
    return Merged(out / PREDICTIONS, len(rows), len(dirs))


class EvalSliceJob:
    """The submitit callable of an eval array: ``job(index)`` runs one slice, then tries the merge."""

    def __init__(self, model: str | Path, suite: str | Path, strategy: str, out: str | Path, workdir: str | Path,
                 label: str | None = None) -> None:
        self.model, self.suite, self.strategy, self.out = str(model), str(suite), strategy, str(out)
        self.workdir, self.label = str(Path(workdir).resolve()), label

    def __call__(self, index: int) -> str:
        import os

        os.chdir(self.workdir)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        d = run_slice(self.model, self.suite, self.strategy, self.out, index, self.label)
        merge_slices(self.out, self.suite)
        return str(d)

    def checkpoint(self, index: int):
        """On preemption: requeue the same slice (rows already written are kept and skipped)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, index)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lcrecipes.launch.eval_array", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("count", help="print the number of slices (array size)").add_argument("suite")
    run = sub.add_parser("run", help="run one slice (all slices in turn without --index), then try the merge")
    run.add_argument("model")
    run.add_argument("--index", type=int, default=None)
    run.add_argument("--label", default=None)
    merge = sub.add_parser("merge", help="merge the slices' rows into OUT/predictions.jsonl")
    for q in (run, merge):
        q.add_argument("--suite", required=True)
        q.add_argument("--out", required=True)
    run.add_argument("--strategy", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.action == "count":
        print(len(eval_slices(load_suite(args.suite))))
        return 0
    if args.action == "run":
        n = len(eval_slices(load_suite(args.suite)))
        for i in range(n) if args.index is None else [args.index]:
            run_slice(args.model, args.suite, args.strategy, args.out, i, args.label)
    merged = merge_slices(args.out, args.suite)
    if merged is not None:
        print(merged.path)
    return 0 if merged is not None or args.action == "run" else 1


if __name__ == "__main__":
    sys.exit(main())
