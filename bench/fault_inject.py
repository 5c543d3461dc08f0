"""Fault injection: SIGKILL the tiny recipe's training at random steps and at random points inside checkpoint
saves, resume, and compare with an uninterrupted run (bit-identical in fp32 on CPU).

    python bench/fault_inject.py --backend deepspeed --kills 20 --save-kills 20 --seed 0
    python bench/fault_inject.py --backend megatron --kills 20 --save-kills 20 --seed 0   # once it is registered

The tiny recipe (recipes/tiny_cpu/pretrain_1.yaml: 2 layers, hidden 64, 512-token sequences, CP=2 on 2 gloo ranks,
a checkpoint every step) is prepared once and trained uninterrupted: the reference (a second uninterrupted run
checks that the reference itself is deterministic). Then trials, each a chain of faults followed by a run to the
end, all from one seeded RNG:

- step kills: wait until ``latest`` reaches a random step (0: during start-up), wait a random fraction of a step,
  SIGKILL torchrun and every rank at once; resume;
- save kills: ``bench/fault_trainer.py`` kills the job (or, 1 time in 5, only the rank) at a random hook point of
  one rank inside ``CheckpointManager.save`` (points traced during the reference run: barriers, the native
  write, half-written files, hashing, state.json, renames, ``latest``, pruning); resume.

After every kill: ``latest`` is absent or names a checkpoint whose every file matches its sha256; partial
directories are listed. After each trial: no partial directory is left, every ``step_N`` verifies, and the metric
rows (loss, grad norm, lr, tokens, eval loss), the final state.json (step, sampler, every rank's RNG) and the
sha256 of every checkpoint file equal the reference. Prints a table; writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fault_run import (  # noqa: E402
    Job,
    check_after_kill,
    compare,
    latest_step,
    prepare_data,
    snapshot,
    wait_until,
)

KINDS = ("step", "save")


class Bench:
    """The shared state of one invocation: paths, RNG, reference snapshot and timings."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work, self.rng = args, work, random.Random(args.seed)
        self.data = Path(args.data_dir) if args.data_dir else work / "data"
        self.n_runs = 0
        self.env = {"FAULT_MEGATRON_CPU": "1"} if args.backend == "megatron" and not _cuda() else {}

    def job(self, name: str, env: dict | None = None) -> Job:
        """Launch ``name`` (``<trial>`` or ``<trial>_<segment>``): segments of a trial share its run dir."""
        self.n_runs += 1
        run_dir = self.work / "runs" / name.split("_")[0]
        log = self.work / "logs" / f"{name}.log"
        return Job(run_dir, self.data, log, self.args.steps, self.args.backend, {**self.env, **(env or {})})

    # ----- the reference -------------------------------------------------------------------------------------
    def reference(self) -> None:
        trace = self.work / "save_trace.jsonl"
        trace.unlink(missing_ok=True)
        job = self.job("reference", {"FAULT_SAVE_TRACE": str(trace)})
        t0, seen = time.monotonic(), {}
        while job.alive():
            seen.setdefault(latest_step(job.run_dir), time.monotonic() - t0)
            time.sleep(0.05)
        if job.finish(self.args.run_timeout) != 0:
            raise RuntimeError(f"the uninterrupted run failed; see {job.log}")
        self.ref = snapshot(job.run_dir)
        times = [seen[s] for s in sorted(seen) if s > 0]
        self.startup_s = times[0] if times else 10.0
        self.step_s = (times[-1] - times[0]) / max(len(times) - 1, 1) if len(times) > 1 else 1.0
        self.points = [json.loads(line) for line in trace.read_text().splitlines()]

    def repeat_reference(self) -> list[str]:
        job = self.job("repeat")
        code = job.finish(self.args.run_timeout)
        return compare(self.ref, snapshot(job.run_dir)) if code == 0 else [f"repeat run exited {code}"]

    # ----- planning ------------------------------------------------------------------------------------------
    def plan(self, kind: str, n: int) -> list[dict]:
        """``n`` faults at increasing steps (a later fault must find a later save to hit)."""
        low = 0 if kind == "step" else 1
        steps = sorted(self.rng.sample(range(low, self.args.steps + (kind == "save")), n))
        if kind == "step":
            return [{"kind": kind, "step": s, "delay": self.rng.random()} for s in steps]
        out = []
        for s in steps:
            p = self.rng.choice([p for p in self.points if p["step"] == s])
            victim = "self" if self.rng.random() < 0.2 else "all"
            out.append(
                {"kind": kind, "step": s, "rank": p["rank"], "index": p["index"], "point": p["point"], "victim": victim}
            )
        return out

    # ----- one fault -----------------------------------------------------------------------------------------
    def step_fault(self, name: str, fault: dict) -> tuple[Job, bool]:
        job = self.job(name)
        target = max(fault["step"], latest_step(job.run_dir) + 1) if fault["step"] > 0 else 0
        fault["target"] = target
        if target == 0:
            time.sleep(fault["delay"] * self.startup_s)
        elif wait_until(lambda: latest_step(job.run_dir) >= target, job, self.args.run_timeout):
            time.sleep(fault["delay"] * self.step_s)
        fired = job.alive()
        if fired:
            job.kill()
        else:
            job.finish(self.args.run_timeout)
        return job, fired

    def save_fault(self, name: str, fault: dict) -> tuple[Job, bool]:
        fired_file = self.work / "logs" / f"{name}.fired.json"
        spec = {k: fault[k] for k in ("step", "rank", "index", "victim")}
        job = self.job(name, {"FAULT_SAVE_KILL": json.dumps(spec), "FAULT_FIRED": str(fired_file)})
        job.finish(self.args.run_timeout)
        if fired_file.exists():
            fault["fired_at"] = json.loads(fired_file.read_text())["point"]
        return job, fired_file.exists()

    # ----- one trial -----------------------------------------------------------------------------------------
    def trial(self, kind: str, t: int, faults: list[dict]) -> dict:
        name = f"{kind}{t:02d}"
        res = {"name": name, "kind": kind, "faults": faults, "kills": 0, "resumed": 0, "failures": []}
        for i, fault in enumerate(faults):
            run_fn = self.step_fault if kind == "step" else self.save_fault
            job, fired = run_fn(f"{name}_{i}", fault)
            fault["fired"] = fired
            res["resumed"] += self._resumed(job)
            if not fired:
                break  # the run finished before the fault point: the trial is complete
            res["kills"] += 1
            fault["after"] = check_after_kill(job.run_dir)
            res["failures"] += fault["after"]["violations"]
        if faults and faults[-1].get("fired", False):
            job = self.job(f"{name}_{len(faults)}")
            code = job.finish(self.args.run_timeout)
            res["resumed"] += self._resumed(job)
            if code != 0:
                res["failures"].append(f"final run exited {code}; see {job.log}")
        self._final_checks(job.run_dir, res)
        return res

    @staticmethod
    def _resumed(job: Job) -> int:
        return int("resumed from" in job.log.read_text(errors="replace"))

    def _final_checks(self, run_dir: Path, res: dict) -> None:
        end = check_after_kill(run_dir)
        res["failures"] += end["violations"]
        if end["tmp_dirs"] or end["broken_step_dirs"]:
            res["failures"].append(f"left behind: {end['tmp_dirs'] + end['broken_step_dirs']}")
        try:
            res["differences"] = compare(self.ref, snapshot(run_dir))
        except Exception as e:  # no metrics or no checkpoint at all
            res["differences"] = [f"cannot snapshot {run_dir}: {type(e).__name__}: {e}"]
        if not self.args.keep and not res["failures"] and not res["differences"]:
            shutil.rmtree(run_dir, ignore_errors=True)

    def run_kind(self, kind: str, n_kills: int) -> list[dict]:
        trials, kills = [], 0
        while kills < n_kills and len(trials) < 3 * n_kills + 3:
            n = min(self.args.kills_per_trial, n_kills - kills)
            res = self.trial(kind, len(trials), self.plan(kind, n))
            kills += res["kills"]
            trials.append(res)
            diffs = res["differences"]
            line = f"{res['kills']} kill(s), {len(res['failures'])} failure(s), {len(diffs)} difference(s) {diffs[:3]}"
            print(f"  {res['name']}: {line}", flush=True)
        return trials


def summarize(backend: str, results: dict[str, list[dict]]) -> list[dict]:
    """Per fault kind: trials, kills, resumes, trials with differences (weights, optimizer state, metric rows,
    sampler, every RNG state), trials with failures."""
    rows = []
    for kind, trials in results.items():
        rows.append(
            {
                "backend": backend,
                "faults": f"{kind} kills",
                "trials": len(trials),
                "kills": sum(t["kills"] for t in trials),
                "resumed": sum(t["resumed"] for t in trials),
                "differences": sum(bool(t["differences"]) for t in trials),
                "failures": sum(bool(t["failures"]) for t in trials),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    cols = ("backend", "faults", "trials", "kills", "resumed", "differences", "failures")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows])


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def backend_available(name: str) -> bool:
    from lcrecipes.train.backends import BACKENDS

    return name in BACKENDS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="deepspeed", choices=["deepspeed", "megatron"])
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs at random steps (in total)")
    p.add_argument("--save-kills", type=int, default=20, help="SIGKILLs inside checkpoint saves (in total)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=12, help="optimizer steps of the tiny run")
    p.add_argument("--kills-per-trial", type=int, default=3, help="faults chained in one run before it finishes")
    p.add_argument("--work", default=None, help="work dir (default: a new temporary dir)")
    p.add_argument("--data-dir", default=None, help="reuse prepared shards (default: <work>/data)")
    p.add_argument("--json", default=None, help="results file (default: <work>/fault_inject_<backend>.json)")
    p.add_argument("--run-timeout", type=float, default=600, help="seconds one launch may take")
    p.add_argument("--no-repeat", action="store_true", help="skip the second uninterrupted run")
    p.add_argument("--keep", action="store_true", help="keep the run dirs of passing trials")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="lcr-fault-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    out = Path(args.json or work / f"fault_inject_{args.backend}.json")
    report: dict = {"backend": args.backend, "seed": args.seed, "steps": args.steps, "work": str(work)}
    if not backend_available(args.backend):
        report["available"] = False
        print(f"{args.backend}: not available (no backend {args.backend!r} registered in lcrecipes.train.backends)")
        out.write_text(json.dumps(report, indent=1) + "\n")
        return 0
    t0 = time.monotonic()
    bench = Bench(args, work)
    prepare_data(bench.data, work / "logs" / "prepare.log")
    try:
        bench.reference()
    except RuntimeError as e:  # e.g. a backend that is registered but cannot train the tiny recipe yet
        report |= {"available": True, "reference_failed": str(e)}
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"{args.backend}: {e}")
        return 2
    report |= {
        "available": True,
        "startup_s": bench.startup_s,
        "step_s": bench.step_s,
        "save_points": len(bench.points),
    }
    print(
        f"reference: {args.steps} steps, {len(bench.points)} save hook points, start-up {bench.startup_s:.1f} s, "
        f"{bench.step_s:.2f} s/step",
        flush=True,
    )
    report["reference_repeat_differences"] = [] if args.no_repeat else bench.repeat_reference()
    print(f"second uninterrupted run: {report['reference_repeat_differences'] or 'identical'}", flush=True)
    results = {k: bench.run_kind(k, n) for k, n in zip(KINDS, (args.kills, args.save_kills)) if n > 0}
    report |= {
        "trials": results,
        "summary": summarize(args.backend, results),
        "runs": bench.n_runs,
        "wall_s": round(time.monotonic() - t0, 1),
    }
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(table(report["summary"]))
    print(f"{bench.n_runs} launches in {report['wall_s']:.0f} s; results in {out}")
    bad = any(r["differences"] or r["failures"] for r in report["summary"])
    bad = bad or report["reference_repeat_differences"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
