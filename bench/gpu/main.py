"""GPU validation and timing run (one H200, ~8 minutes), or its CPU smoke run. Start it through run.sh:

    bash bench/gpu/run.sh                       # on the GPU: full plan, JSON to $OUT (or runs/gpu_bench)
    bash bench/gpu/run.sh --cpu-smoke --out /tmp/smoke   # tiny sizes on CPU, < 1 minute (CI)

Every section runs in a worker process (one per section on the GPU, one shared in the smoke run). This process
only orchestrates: it follows the workers' event files, stops a section at its timeout (keeping its last partial
result), records a crashed worker's log tail, starts no section after the global budget, rewrites
``gpu_results.json`` after every section, and prints one table at the end. See README.md for what is measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.gpu.plan import SECTION_ORDER, Plan, make_plan

POLL_S = 0.5
GRACE_S = 15.0  # a section sees its deadline; the worker is killed only this much later
IDLE_LIMIT_S = 120.0  # a worker that runs no section this long (hung in an import) is killed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU (what CI runs)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: $OUT, else runs/gpu_bench)")
    p.add_argument("--logs", type=Path, default=None, help="worker logs and scratch files (default: OUT/logs)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(SECTION_ORDER)}")
    p.add_argument("--budget-s", type=float, default=None, help="start no section after this many seconds")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s for MFU (default: by device)")
    p.add_argument("--offload-layers", type=int, default=None, help="decoder layers in the offload probe tries")
    p.add_argument("--eval-model", default=None, help="model shape of the eval section (see specs.py)")
    p.add_argument("--isolate", default=None, choices=["yes", "no"], help="one process per section")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sections", default="", help=argparse.SUPPRESS)
    p.add_argument("--events", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--t0", type=float, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def plan_of(args: argparse.Namespace) -> Plan:
    isolate = None if args.isolate is None else args.isolate == "yes"
    return make_plan(
        "cpu-smoke" if args.cpu_smoke else "gpu",
        offload_layers=args.offload_layers,
        eval_spec=args.eval_model,
        budget_s=args.budget_s,
        isolate=isolate,
    )


def plan_argv(args: argparse.Namespace) -> list[str]:
    """The options that define the plan, for the worker's command line."""
    out = ["--cpu-smoke"] if args.cpu_smoke else []
    for flag in ("budget_s", "peak_tflops", "offload_layers", "eval_model", "isolate"):
        value = getattr(args, flag)
        if value is not None:
            out += [f"--{flag.replace('_', '-')}", str(value)]
    return out


def selected_sections(only: str | None) -> list[str]:
    if not only:
        return list(SECTION_ORDER)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SECTION_ORDER))
    if unknown:
        raise SystemExit(f"--only: unknown section(s) {unknown}; known: {', '.join(SECTION_ORDER)}")
    return [n for n in SECTION_ORDER if n in names]


class Follower:
    """Reads new complete lines of a growing file (events as JSON, or a log to copy to stderr)."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode(errors="replace").splitlines()


class Orchestrator:
    def __init__(self, plan: Plan, args: argparse.Namespace, out_dir: Path, work_dir: Path | None = None):
        self.plan, self.args, self.out_dir = plan, args, out_dir
        self.work_dir = work_dir or out_dir
        self.t0 = time.time()
        self.records: dict[str, dict[str, Any]] = {}
        self.workers = 0
        self.grace_s, self.idle_limit_s = GRACE_S, IDLE_LIMIT_S

    def run(self, names: list[str]) -> None:
        pending = list(names)
        while pending:
            if time.time() - self.t0 > self.plan.start_budget_s:
                for name in pending:
                    self.records[name] = skipped_record(
                        f"global time budget ({self.plan.start_budget_s:.0f} s) used before it could start"
                    )
                break
            self.run_worker(pending[:1] if self.plan.isolate_sections else list(pending))
            pending = [n for n in pending if n not in self.records]
            self.write_json()

    def worker_cmd(self, batch: list[str], events: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.gpu.main",
            "--worker",
            "--sections",
            ",".join(batch),
            "--events",
            str(events),
            "--t0",
            str(self.t0),
            "--logs",
            str(self.work_dir),
            *plan_argv(self.args),
        ]

    def run_worker(self, batch: list[str]) -> None:
        self.workers += 1
        events, log = (
            self.work_dir / f"{stem}-{self.workers}.{ext}" for stem, ext in (("events", "jsonl"), ("worker", "log"))
        )
        with open(log, "w") as logf:
            proc = subprocess.Popen(
                self.worker_cmd(batch, events), stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
            )
        state = WorkerState(batch, Follower(events), Follower(log))
        while not self.step(proc, state):
            time.sleep(POLL_S)
        self.finish(proc, state, log)

    def step(self, proc: subprocess.Popen, state: WorkerState) -> bool:
        """Consume events and log lines; return True when the worker is done (exited or killed)."""
        exited = proc.poll() is not None
        state.pump(self.records)
        if exited:
            return True
        if state.current is None:
            if time.time() - state.idle_since <= self.idle_limit_s:
                return False
            kill(proc)
            state.pump(self.records)
            return True
        limit = min(self.plan.timeouts[state.current], self.t0 + self.plan.hard_limit_s - state.started) + self.grace_s
        if time.time() - state.started <= limit:
            return False
        kill(proc)
        state.pump(self.records)
        if state.current is not None:
            self.records[state.current] = state.lost("timeout", f"stopped after {limit:.0f} s (section timeout)")
        return True

    def finish(self, proc: subprocess.Popen, state: WorkerState, log: Path) -> None:
        tail = log.read_text(errors="replace")[-4000:]
        if state.current is not None and state.current not in self.records:
            self.records[state.current] = state.lost("crashed", f"worker exited with code {proc.returncode}", tail)
        if not state.started_any:
            for name in state.batch:
                self.records[name] = {
                    "status": "crashed",
                    "error": f"worker exited with code {proc.returncode} before starting any section",
                    "log_tail": tail,
                    "seconds": 0.0,
                    "rows": [["", "CRASHED (worker did not start)"]],
                }

    def write_json(self) -> Path:
        path = self.out_dir / "gpu_results.json"
        env = self.records.get("env", {}).get("result", {})
        meta = {
            "mode": self.plan.mode,
            "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "device": env.get("device_name", env.get("device")),
            "argv": sys.argv[1:],
            "elapsed_s": time.time() - self.t0,
            "start_budget_s": self.plan.start_budget_s,
            "hard_limit_s": self.plan.hard_limit_s,
            "section_order": list(SECTION_ORDER),
        }
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"meta": meta, "sections": self.records}, indent=1, default=str))
        tmp.replace(path)
        return path


def kill(proc: subprocess.Popen) -> None:
    """Kill the worker and everything it started (it leads its own process session)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class WorkerState:
    """What one worker has reported so far: the section running, its start time and last partial result."""

    def __init__(self, batch: list[str], events: Follower, log: Follower):
        self.batch, self.events, self.log = batch, events, log
        self.current: str | None = None
        self.started = 0.0
        self.started_any = False
        self.idle_since = time.time()
        self.partial: dict[str, Any] = {}

    def pump(self, records: dict[str, dict[str, Any]]) -> None:
        for line in self.log.lines():
            print(line, file=sys.stderr, flush=True)
        for line in self.events.lines():
            self.apply(json.loads(line), records)

    def apply(self, ev: dict[str, Any], records: dict[str, dict[str, Any]]) -> None:
        if ev["event"] == "start":
            self.current, self.started, self.started_any, self.partial = ev["section"], time.time(), True, {}
        elif ev["event"] == "partial":
            self.partial = {"result": ev["result"], "rows": ev["rows"]}
        elif ev["event"] == "end":
            records[ev["section"]] = ev["record"]
            self.current, self.idle_since = None, time.time()

    def lost(self, status: str, why: str, log_tail: str = "") -> dict[str, Any]:
        """Record of the running section when its worker was killed or died (last partial result kept)."""
        rows = [["", f"{status.upper()}: {why}"], *self.partial.get("rows", [])]
        record = {
            "status": status,
            "error": why,
            "seconds": time.time() - self.started,
            "rows": rows,
            "result": self.partial.get("result", {}),
        }
        if log_tail:
            record["log_tail"] = log_tail
        return record


def skipped_record(reason: str) -> dict[str, Any]:
    text = f"skipped: {reason}"
    return {"status": "skipped", "reason": text, "seconds": 0.0, "rows": [["", text]]}


def table(records: dict[str, dict[str, Any]], meta_line: str) -> str:
    lines = [meta_line, f"{'section':<17} {'case':<20} result", f"{'-' * 17} {'-' * 20} {'-' * 40}"]
    for name in SECTION_ORDER:
        rec = records.get(name)
        if rec is None:
            continue
        rows = rec.get("rows") or [["", rec.get("status", "?")]]
        for i, (case, text) in enumerate(rows):
            lines.append(f"{name if i == 0 else '':<17} {case[:20]:<20} {text}")
    return "\n".join(lines)


def orchestrate(args: argparse.Namespace) -> int:
    plan = plan_of(args)
    out_dir = (args.out or Path(os.environ.get("OUT") or "runs/gpu_bench")).resolve()
    work_dir = (args.logs or out_dir / "logs").resolve()
    for d in (out_dir, work_dir):
        d.mkdir(parents=True, exist_ok=True)
    orch = Orchestrator(plan, args, out_dir, work_dir)
    orch.run(selected_sections(args.only))
    path = orch.write_json()
    env = orch.records.get("env", {}).get("result", {})
    device = env.get("device_name", env.get("device", "?"))
    head = (
        f"lcrecipes GPU bench | mode {plan.mode} | {device} | {datetime.now(UTC):%Y-%m-%d %H:%M} UTC | "
        f"{time.time() - orch.t0:.0f} s | {path}"
    )
    text = table(orch.records, head)
    (out_dir / "gpu_table.txt").write_text(text + "\n")
    print(text, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.worker:
        return orchestrate(args)
    from bench.gpu.worker import run_worker

    names = [n for n in args.sections.split(",") if n]
    run_worker(plan_of(args), names, args.events, args.logs, args.t0, args.peak_tflops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
