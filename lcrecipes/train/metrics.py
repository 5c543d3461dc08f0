"""Step metrics: one console line per logged step (rank 0), JSONL rows beside it, TensorBoard scalars.

Files: ``<run_dir>/logs/metrics.jsonl`` (one JSON object per row, ``kind`` = train | eval) and
``<run_dir>/logs/tensorboard/``. On resume, rows after the resumed step are dropped first, so the file always
describes one consistent run.
"""

from __future__ import annotations

import json
import logging
import resource
from pathlib import Path

import torch

from lcrecipes.models import ModelSpec, training_flops
from lcrecipes.models.flops import KNOWN_PEAK_TFLOPS
from lcrecipes.train.batch import MicroBatch
from lcrecipes.utils.io import atomic_write_text

log = logging.getLogger("lcrecipes.train")
GiB = float(1 << 30)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this rank in bytes: allocated CUDA memory on GPU, peak resident set size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def peak_tflops(configured: float, device: torch.device) -> float:
    """``train.peak_tflops`` when set, else the known peak of the GPU model (0 = unknown, MFU logged as 0)."""
    if configured > 0 or device.type != "cuda":
        return configured
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in KNOWN_PEAK_TFLOPS.items() if k in name), 0.0)


def step_flops(spec: ModelSpec, micro_batches: list[MicroBatch], counts: bool) -> float:
    """Training FLOPs of this rank's sequences (``lcrecipes.models.flops``: 6·N·T + 6·L·d·Σ S², causal
    attention); ``counts=False`` on all but one rank of a CP group, which share the same sequences."""
    return sum(training_flops(spec, mb.doc_lens) for mb in micro_batches) if counts else 0.0


class MetricsLogger:
    """Console (rank 0), JSONL and TensorBoard sinks; only rank 0 writes."""

    def __init__(self, run_dir: str | Path, is_main: bool, tensorboard: bool = True):
        self.is_main = is_main
        self.path = Path(run_dir) / "logs" / "metrics.jsonl"
        self._tb = None
        if is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop rows of steps later than ``step`` (a resumed run repeats them) and an unterminated last line (a
        write cut by a crash); the file is replaced atomically, so a kill meanwhile keeps the old rows."""
        if not self.is_main or not self.path.is_file():
            return
        lines = self.path.read_text().split("\n")
        torn = lines.pop()  # "" when the file ends with a newline
        if torn.strip():
            log.warning("%s: dropping an unterminated last line (a write cut by a crash): %.80s", self.path, torn)
        keep = [line for n, line in enumerate(lines, 1) if line.strip() and self._step(line, n) <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in keep))

    def _step(self, line: str, lineno: int) -> int:
        try:
            return int(json.loads(line).get("step", 0))
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{self.path}:{lineno}: not a metrics row ({e}); fix or delete the line") from None

    def log(self, row: dict) -> None:
        if not self.is_main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, int | float) and k != "step":
                    self._tb.add_scalar(f"{row['kind']}/{k}", v, row["step"])
        log.info(format_row(row))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def format_row(row: dict) -> str:
    """One console line: ``step 12/100 | loss 3.2145 | grad 0.812 | ...``."""
    if row["kind"] == "eval":
        return f"eval step {row['step']} | loss {row['loss']:.4f} | tokens {row['target_tokens']}"
    # no peak known (train.peak_tflops=0, e.g. CPU): the achieved model TFLOP/s instead of a meaningless 0.0%
    util = f"mfu {100 * row['mfu']:.1f}%" if row["mfu"] > 0 else f"mfu n/a ({row.get('tflops', 0.0):.4f} TFLOP/s)"
    return (f"step {row['step']}/{row['steps']} | loss {row['loss']:.4f} | grad {row['grad_norm']:.3f} | "
            f"lr {row['lr']:.2e} | tok/s {row['tokens_per_s']:.0f} | {util} | "
            f"mem {row['peak_mem_gib']:.2f} GiB | {row['step_s']:.2f} s")
