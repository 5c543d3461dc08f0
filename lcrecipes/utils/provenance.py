"""What produced a run: git commit, package versions, host."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("lcrecipes", "torch", "transformers", "deepspeed", "megatron-core", "kvpress", "datasets",
            "sentencepiece", "omegaconf", "submitit", "transformer-engine", "flash-attn")


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def environment_info() -> dict:
    return {"git_commit": git_commit(), "packages": package_versions(), "python": platform.python_version(),
            "host": platform.node()}
