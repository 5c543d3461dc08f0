"""The worker process: runs the sections it is given, one after another, and reports through an events file.

Events (one JSON object per line, appended and flushed): ``{"event": "start", "section", "t"}``,
``{"event": "partial", "section", "result", "rows"}`` (a section's ``ctx.emit``), and ``{"event": "end",
"section", "record"}``. A record is ``{"status": "ok" | "skipped" | "error", "seconds", "result", "rows",
"reason" (skipped), "error" + "traceback" (error)}``. The orchestrator (``main.py``) turns a section that never
ends into "timeout" or "crashed", keeping its last partial result.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from bench.gpu import sections  # noqa: F401  (registers the sections)
from bench.gpu.common import SECTIONS, Context, Section, Skipped, skip_text
from bench.gpu.plan import Plan
from lcrecipes.models.flops import KNOWN_PEAK_TFLOPS

log = logging.getLogger("bench.gpu")


def peak_tflops(device: torch.device, override: float | None) -> float:
    """Peak dense bf16 TFLOP/s of ``device`` from ``KNOWN_PEAK_TFLOPS`` (0 when unknown, e.g. CPU)."""
    if override is not None:
        return override
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in KNOWN_PEAK_TFLOPS.items() if k in name), 0.0)


def safe_rows(section: Section, result: dict[str, Any]) -> list[list[str]]:
    """The section's table rows; a broken summary must not lose the result."""
    try:
        return [[str(a), str(b)] for a, b in section.summary(result)]
    except Exception as err:  # noqa: BLE001 - the table is cosmetic, the JSON keeps everything
        return [["summary", f"unavailable ({type(err).__name__}: {err})"[:120]]]


class EventLog:
    def __init__(self, path: Path):
        self.path = path

    def write(self, **event: Any) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(event, default=str) + "\n")
            f.flush()


def run_section(section: Section, ctx: Context, partial: dict[str, Any]) -> dict[str, Any]:
    """Run one section and return its record; Skipped and errors become records, never exceptions. On an error
    the record keeps the last partial result the section emitted (``partial["result"]``)."""
    start = time.time()
    try:
        result = section.run(ctx)
        record: dict[str, Any] = {"status": "ok", "result": result, "rows": safe_rows(section, result)}
    except Skipped as why:
        record = {"status": "skipped", "reason": skip_text(str(why)), "rows": [["", skip_text(str(why))]]}
    except Exception as err:  # noqa: BLE001 - one section's failure must not lose the others
        log.exception("section %s failed", section.name)
        record = {
            "status": "error",
            "error": f"{type(err).__name__}: {err}"[:1000],
            "traceback": traceback.format_exc()[-6000:],
            "result": partial.get("result", {}),
            "rows": [["", f"ERROR {type(err).__name__}: {str(err)[:80]}"], *partial.get("rows", [])],
        }
    record["seconds"] = time.time() - start
    return record


def run_worker(
    plan: Plan, names: list[str], events_path: Path, work_dir: Path, t0: float, peak_override: float | None
) -> None:
    """Run ``names`` in order; a section that would start after ``plan.start_budget_s`` is skipped."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if plan.mode == "cpu-smoke":
        torch.set_num_threads(1)  # CI machines are small and shared; tiny ops gain nothing from more threads
    events, peak = EventLog(events_path), peak_tflops(device, peak_override)
    for name in names:
        events.write(event="start", section=name, t=time.time())
        if time.time() - t0 > plan.start_budget_s:
            reason = skip_text(f"global time budget ({plan.start_budget_s:.0f} s) used before it could start")
            events.write(
                event="end",
                section=name,
                record={"status": "skipped", "reason": reason, "seconds": 0.0, "rows": [["", reason]]},
            )
            continue
        section = SECTIONS[name]()
        deadline = min(time.time() + plan.timeouts[name], t0 + plan.hard_limit_s)

        partial: dict[str, Any] = {}

        def emit(result, s=section, n=name, keep=partial):
            keep.update(result=result, rows=safe_rows(s, result))
            events.write(event="partial", section=n, **keep)

        ctx = Context(plan=plan, device=device, work_dir=work_dir, deadline=deadline, peak_tflops=peak, emit=emit)
        log.info("section %s: start (%.0f s allowed)", name, deadline - time.time())
        events.write(event="end", section=name, record=run_section(section, ctx, partial))
