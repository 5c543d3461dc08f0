"""``env``: the machine and the software the other sections will find (versions, or why a package is missing)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import subprocess
from typing import Any

import torch

from bench.gpu.common import Context, Section, gib, register, skip_text

# distribution name -> import name of the optional packages the sections use
OPTIONAL = {
    "transformers": "transformers",
    "flash-attn": "flash_attn",
    "transformer-engine": "transformer_engine",
    "deepspeed": "deepspeed",
    "megatron-core": "megatron.core",
    "kvpress": "kvpress",
    "triton": "triton",
}


def package_version(dist: str, module: str) -> str:
    """The installed version of ``dist``, or ``"skipped: ..."`` when its module cannot be found."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return skip_text(f"{module} not installed")
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "installed (version unknown)"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@register
class EnvSection(Section):
    name = "env"

    def run(self, ctx: Context) -> dict[str, Any]:
        out: dict[str, Any] = {
            "python": platform.python_version(), "torch": torch.__version__, "git_commit": git_commit(),
            "device": str(ctx.device), "peak_tflops": ctx.peak_tflops, "cpu_count": _cpu_count(),
            "packages": {dist: package_version(dist, mod) for dist, mod in OPTIONAL.items()},
        }  # fmt: skip
        if ctx.device.type == "cuda":
            props = torch.cuda.get_device_properties(ctx.device)
            out.update(
                device_name=props.name,
                capability=f"{props.major}.{props.minor}",
                total_memory_bytes=props.total_memory,
                cuda=torch.version.cuda,
                multiprocessors=props.multi_processor_count,
            )
        return out

    def summary(self, result: dict[str, Any]) -> list[tuple[str, str]]:
        dev = result.get("device_name", result.get("device", "?"))
        mem = f" ({gib(result['total_memory_bytes'])})" if "total_memory_bytes" in result else ""
        rows = [("device", f"{dev}{mem}, torch {result.get('torch')}, peak {result.get('peak_tflops')} TFLOP/s")]
        pkgs = result.get("packages", {})
        rows.append(
            ("packages", ", ".join(f"{k} {'-' if str(v).startswith('skipped') else v}" for k, v in pkgs.items()))
        )
        return rows


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 0
