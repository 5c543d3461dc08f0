"""File manifests of a checkpoint directory and their verification.

A manifest maps each file's path (relative to the checkpoint dir, ``/``-separated) to ``{"size": bytes,
"sha256": hex}``. ``state.json`` holds the manifest of every other file, so it is never listed itself.
``verify_checkpoint(dir, "fast")`` compares sizes, ``"full"`` also recomputes every hash; either raises a
:class:`CheckpointError` naming the first bad file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

STATE_FILE = "state.json"
_CHUNK = 1 << 22  # 4 MiB reads


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupted; the message names the file."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def list_files(ckpt_dir: Path) -> list[str]:
    """Every regular file under ``ckpt_dir`` except ``state.json``, relative and sorted."""
    ckpt_dir = Path(ckpt_dir)
    out = [p.relative_to(ckpt_dir).as_posix() for p in ckpt_dir.rglob("*") if p.is_file()]
    return sorted(p for p in out if p != STATE_FILE)


def manifest(ckpt_dir: Path, names: Iterable[str]) -> dict[str, dict]:
    """``{name: {"size", "sha256"}}`` for the given relative file names (a share of the files, see
    ``CheckpointManager``: each rank hashes a slice)."""
    ckpt_dir = Path(ckpt_dir)
    return {n: {"size": (ckpt_dir / n).stat().st_size, "sha256": sha256_file(ckpt_dir / n)} for n in names}


def _check_file(ckpt_dir: Path, name: str, want: dict, mode: str) -> None:
    path = ckpt_dir / name
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (listed in {ckpt_dir / STATE_FILE})")
    size = path.stat().st_size
    if size != want["size"]:
        raise CheckpointError(f"{path}: size {size} bytes, expected {want['size']} (truncated or replaced)")
    if mode == "full" and sha256_file(path) != want["sha256"]:
        raise CheckpointError(f"{path}: sha256 differs from {ckpt_dir / STATE_FILE} (corrupted)")


def verify_files(ckpt_dir: Path, files: dict[str, dict], mode: str = "fast", share: tuple[int, int] = (0, 1)) -> None:
    """Check the listed files (``mode``: fast = sizes, full = sizes + sha256) and that no file is unlisted.

    ``share = (i, n)`` checks only every n-th file starting at i (ranks split the work); share 0 also checks
    for unlisted files."""
    if mode not in ("fast", "full"):
        raise ValueError(f"verify mode must be 'fast' or 'full', got {mode!r}")
    ckpt_dir = Path(ckpt_dir)
    for name in sorted(files)[share[0]::share[1]]:
        _check_file(ckpt_dir, name, files[name], mode)
    extra = sorted(set(list_files(ckpt_dir)) - set(files)) if share[0] == 0 else []
    if extra:
        raise CheckpointError(f"{ckpt_dir / extra[0]}: not listed in {ckpt_dir / STATE_FILE}")


def verify_checkpoint(ckpt_dir: str | Path, mode: str = "fast") -> dict:
    """Read ``state.json`` of ``ckpt_dir`` and verify its files; returns the parsed state."""
    from lcrecipes.checkpoint.state import read_state

    state = read_state(ckpt_dir)
    verify_files(Path(ckpt_dir), state["files"], mode)
    return state
