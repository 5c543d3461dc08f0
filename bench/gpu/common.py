"""Shared pieces of the GPU bench: the section base class and registry, skips and guards, the run context, timers.

A section is one file (``sec_*.py``) holding one :class:`Section` subclass registered with :func:`register`. Its
``run(ctx)`` returns a JSON-able dict of results; anything it cannot do here it reports either by raising
:class:`Skipped` (the whole section) or by storing ``skip_text(reason)`` in place of a sub-result. Sections never
catch broad errors to hide them: the worker records the traceback (see ``worker.py``).
"""

from __future__ import annotations

import importlib
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import torch

from bench.gpu.plan import Plan

GIB = 2**30


class Skipped(Exception):
    """Raised by a section (or a guard) that cannot run here; the message is the reason."""


def skip_text(reason: str) -> str:
    """The JSON value recorded in place of a result that was not measured: ``"skipped: <reason>"``."""
    return f"skipped: {reason}"


def require_cuda(ctx: Context) -> None:
    """Raise :class:`Skipped` unless the run is on a CUDA device."""
    if ctx.device.type != "cuda":
        raise Skipped("needs CUDA (torch.cuda.is_available() is False)")


def require_module(name: str) -> ModuleType:
    """Import ``name`` or raise :class:`Skipped` naming the import error (any exception: a broken CUDA
    extension raises OSError or RuntimeError, not only ImportError)."""
    try:
        return importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - every import failure is a reason to skip, recorded verbatim
        raise Skipped(f"{name} not importable ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err


@dataclass
class Context:
    """What a section gets: the plan (sizes), the device, a work folder for its scratch files and logs, its
    deadline (epoch seconds),
    the peak bf16 TFLOP/s used for MFU (0 = unknown) and ``emit`` to publish a partial result (kept if the
    section later times out or crashes)."""

    plan: Plan
    device: torch.device
    work_dir: Path
    deadline: float
    peak_tflops: float
    emit: Callable[[dict], None] = field(default=lambda result: None)

    def time_left(self) -> float:
        """Seconds until this section's deadline."""
        return self.deadline - time.time()


class Section:
    """One bench section; subclasses set ``name`` and fill :meth:`run` (and :meth:`summary` for the table)."""

    name: ClassVar[str] = ""

    def run(self, ctx: Context) -> dict[str, Any]:
        raise NotImplementedError

    def summary(self, result: dict[str, Any]) -> list[tuple[str, str]]:
        """Rows ``(case, text)`` for the final table; default: one row per top-level number."""
        return [(k, fmt_num(v)) for k, v in result.items() if isinstance(v, int | float)]


SECTIONS: dict[str, type[Section]] = {}


def register(cls: type[Section]) -> type[Section]:
    """Class decorator: add a section under ``cls.name``."""
    if not cls.name or cls.name in SECTIONS:
        raise ValueError(f"section class {cls.__name__} needs a unique non-empty name, got {cls.name!r}")
    SECTIONS[cls.name] = cls
    return cls


def guarded(fn: Callable[[], Any]) -> Any:
    """``fn()``, or ``{"error", "traceback"}`` if it raises: one case's failure must not lose the others."""
    import traceback

    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - recorded with its traceback, never hidden
        return {"error": f"{type(err).__name__}: {err}"[:500], "traceback": traceback.format_exc()[-4000:]}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_single_rank(backend: str) -> None:
    """A one-rank torch.distributed default group (``env://`` on a free local port); no-op if one exists."""
    import os

    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group(backend=backend, rank=0, world_size=1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> dict[str, int]:
    """Peak memory since :func:`reset_peak`: CUDA allocator peaks (allocated, reserved) in bytes; on CPU the
    process peak RSS (not resettable, so an upper bound over the whole process)."""
    if device.type == "cuda":
        return {
            "peak_alloc_bytes": torch.cuda.max_memory_allocated(device),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(device),
        }
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def free_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``(fn(), seconds)`` with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error ``||x - ref||_F / ||ref||_F`` computed in fp32."""
    ref = ref.float()
    return float((x.float() - ref).norm() / ref.norm().clamp_min(1e-30))


def fmt_num(v: Any) -> str:
    """Short human form of a number (3 significant digits; ints with thousands separators)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if v == 0 or not math.isfinite(v):
        return str(v)
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"


def fmt_tokens(n: int) -> str:
    """``32768`` -> ``"32K"``; lengths that are not a multiple of 1024 print as is."""
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def gib(n_bytes: float | None) -> str:
    """Bytes as GiB (MiB below 1 GiB); "n/a" for None."""
    if n_bytes is None:
        return "n/a"
    return f"{n_bytes / GIB:.1f} GiB" if n_bytes >= GIB else f"{n_bytes / 2**20:.1f} MiB"
