"""``offload_probe``: the longest sequence one H200 trains the 8B shape at under DeepSpeed ZeRO-3 CPU offload.

Binary search over the plan's lengths (32K ... 512K in steps of 32K on the GPU); each try is one training step in
a fresh process (``offload_try.py``, capped at ``try_timeout_s``), an out-of-memory step counting as "does not
fit". To stay inside the bench's minutes the tries run the model with ``probe_layers`` decoder layers (the full
width, vocabulary, output layer and ZeRO-3 machinery) and extrapolate the measured peak to the full depth:

    predicted_peak(T) = measured_peak(T, probe_layers) + (L - probe_layers) * T * hidden * bytes(dtype)

the added term being the one checkpointed hidden state every further layer keeps (parameters are offloaded and
gathered a layer at a time). A length fits when its try succeeds and ``predicted_peak <= headroom * memory``.
``--offload-layers 32`` runs the real depth (no extrapolation) when a session has the minutes for it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.gpu.common import Context, Section, fmt_tokens, gib, register, require_cuda, require_module, skip_text
from bench.gpu.specs import get_spec

MIN_TRY_S = 15.0  # no try starts with less time left in the section


def longest_fitting(grid: list[int], fits: Callable[[int], bool | None]) -> tuple[int | None, str]:
    """Largest ``x`` of the ascending ``grid`` with ``fits(x)``, by binary search (fitting is assumed monotone:
    if ``x`` fits, every shorter length does). ``fits`` returns None to stop the search early. Returns
    ``(longest or None, "complete" | "stopped")``; when stopped, the longest length proven so far."""
    lo, hi, best = 0, len(grid) - 1, None
    while lo <= hi:
        mid = lo if best is None else (lo + hi + 1) // 2
        verdict = fits(grid[mid])
        if verdict is None:
            return best, "stopped"
        if verdict:
            best, lo = grid[mid], mid + 1
        elif best is None:
            return None, "complete"
        else:
            hi = mid - 1
    return best, "complete"


def run_isolated(req: dict, timeout: float, work_dir: Path) -> dict[str, Any]:
    """Run one try in its own process (session) and return its result; timeout and crash become results."""
    stem = work_dir / f"offload_try_{req['tokens']}"
    Path(f"{stem}.req.json").write_text(json.dumps(req))
    result, log = Path(f"{stem}.result.json"), Path(f"{stem}.log")
    cmd = [sys.executable, "-m", "bench.gpu.offload_try", f"{stem}.req.json", str(result)]
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"status": "timeout", "tokens": req["tokens"], "seconds": timeout}
    if rc == 0 and result.is_file():
        return json.loads(result.read_text())
    return {"status": "error", "tokens": req["tokens"], "returncode": rc, "log_tail": log.read_text()[-3000:]}


def run_inline(req: dict) -> dict[str, Any]:
    from bench.gpu.offload_try import run_try

    try:
        return run_try(req)
    except Exception as err:  # noqa: BLE001 - a failed try is a result of the probe, with its traceback
        return {
            "status": "error",
            "tokens": req["tokens"],
            "error": f"{type(err).__name__}: {err}"[:500],
            "traceback": traceback.format_exc()[-3000:],
        }


class Probe:
    """State of one search: runs tries, judges them, keeps the record (``self.result``)."""

    def __init__(self, ctx: Context):
        self.ctx, self.sizes = ctx, ctx.plan.offload
        self.spec = get_spec(self.sizes.spec)
        self.bytes_per_value = torch.empty((), dtype=getattr(torch, ctx.plan.dtype)).element_size()
        capacity = torch.cuda.get_device_properties(ctx.device).total_memory if ctx.device.type == "cuda" else None
        self.result: dict[str, Any] = {
            "spec": self.sizes.spec, "full_layers": self.spec.num_layers, "probe_layers": self.sizes.probe_layers,
            "extrapolated": self.sizes.probe_layers < self.spec.num_layers, "doc_len": self.sizes.doc_len,
            "grid": self.sizes.lengths, "capacity_bytes": capacity, "headroom": self.sizes.headroom,
            "optimizer": "torch SGD on CPU partitions (Adam states for 8B exceed the host's 128 GiB)", "tries": [],
        }  # fmt: skip

    def request(self, tokens: int) -> dict[str, Any]:
        return {
            "spec": self.sizes.spec,
            "layers": self.sizes.probe_layers,
            "tokens": tokens,
            "doc_len": self.sizes.doc_len,
            "loss_chunk": self.sizes.loss_chunk,
            "dtype": self.ctx.plan.dtype,
            "device": str(self.ctx.device),
        }

    def judge(self, tried: dict[str, Any]) -> bool:
        """Add ``predicted_full_peak_bytes`` and ``fits`` to a try's record; return ``fits``."""
        extra = (self.spec.num_layers - self.sizes.probe_layers) * tried["tokens"] * self.spec.hidden_size
        peak = tried.get("peak_alloc_bytes")
        predicted = None if peak is None else peak + extra * self.bytes_per_value
        capacity = self.result["capacity_bytes"]
        fits = tried.get("status") == "ok" and (
            predicted is None or capacity is None or predicted <= self.sizes.headroom * capacity
        )
        tried.update(predicted_full_peak_bytes=predicted, fits=fits)
        return fits

    def fits(self, tokens: int) -> bool | None:
        """Whether ``tokens`` fits; None (stop the search) when no time is left or the try timed out (unknown)."""
        left = self.ctx.time_left()
        if left < MIN_TRY_S:
            return None
        req = self.request(tokens)
        timeout = min(self.sizes.try_timeout_s, left - 5)
        tried = run_isolated(req, timeout, self.ctx.work_dir) if self.sizes.isolate_tries else run_inline(req)
        verdict = self.judge(tried)
        self.result["tries"].append(tried)
        self.ctx.emit(self.result)
        return None if tried.get("status") == "timeout" else verdict


@register
class OffloadProbeSection(Section):
    name = "offload_probe"

    def run(self, ctx: Context) -> dict[str, Any]:
        if not ctx.plan.allow_cpu:
            require_cuda(ctx)
        require_module("deepspeed")
        probe = Probe(ctx)
        longest, search = longest_fitting(probe.sizes.lengths, probe.fits)
        stopped = skip_text("search stopped (section time budget, or a try timed out); longest proven so far kept")
        probe.result.update(longest_fit_tokens=longest, search=search if search == "complete" else stopped)
        return probe.result

    def summary(self, result: dict[str, Any]) -> list[tuple[str, str]]:
        longest = result.get("longest_fit_tokens")
        how = (
            f"L={result.get('probe_layers')} measured, extrapolated to {result.get('full_layers')}"
            if result.get("extrapolated")
            else "measured at full depth"
        )
        rows = [
            (
                "longest fit",
                f"{fmt_tokens(longest) if longest else 'none'} tokens ({how}); "
                f"search {str(result.get('search', 'unfinished'))[:40]}",
            )
        ]
        for t in result.get("tries", []):
            rows.append(
                (
                    f"try {fmt_tokens(t['tokens'])}",
                    f"{t.get('status')}  fits={t.get('fits')}  "
                    f"predicted peak {gib(t.get('predicted_full_peak_bytes'))}",
                )
            )
        return rows
