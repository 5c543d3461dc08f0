"""Checkpoint directories of a run: ``<run_dir>/checkpoints/step_<N>/`` plus a ``latest`` pointer file.

Saving is collective (every rank calls :meth:`CheckpointManager.save`):

1. rank 0 creates ``checkpoints/.step_<N>.tmp/`` (a stale one from a crash is removed first);
2. every rank writes its part of the backend's native state into it (``write_native(dir)``), and its RNG states
   are gathered;
3. the files are hashed, each rank a slice; rank 0 writes ``state.json`` (step, sampler, RNG, config hash, the
   size and sha256 of every file), renames the directory to ``step_<N>`` and only then rewrites ``latest``;
4. older checkpoints beyond ``keep_last`` are deleted: each is first renamed to a hidden
   ``.trash-step_<N>-<pid>`` (atomic), then removed, so a kill half-way never leaves a broken ``step_<N>``.

A crash at any point leaves ``latest`` naming a complete checkpoint (or absent). On start-up
:meth:`CheckpointManager.clean_stale` removes what a crash may leave: ``.step_<N>.tmp`` directories, ``.trash-*``
directories and ``.latest.*.tmp`` files. Assumes a file system that all ranks share (the usual cluster setup).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist

from lcrecipes.checkpoint.rng import capture_rng
from lcrecipes.checkpoint.state import TrainState, read_state, write_state
from lcrecipes.checkpoint.verify import CheckpointError, list_files, manifest, verify_files
from lcrecipes.utils.io import atomic_write_text, fsync_dir

log = logging.getLogger(__name__)
LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")
STALE = (".step_*.tmp", ".trash-*", f".{LATEST}.*.tmp")  # left by a crash during a save or a prune


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _world()[1] > 1:
        dist.barrier()


def _all_gather(obj) -> list:
    if _world()[1] == 1:
        return [obj]
    out = [None] * _world()[1]
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj):
    if _world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class CheckpointManager:
    """Layout, atomic save protocol, ``latest`` pointer, resume resolution and pruning for one run."""

    def __init__(self, root: str | Path, keep_last: int = 2, verify: str = "fast"):
        self.root, self.keep_last, self.verify = Path(root), keep_last, verify

    def step_dir(self, step: int) -> Path:
        return self.root / f"step_{step}"

    def steps(self) -> list[int]:
        """Steps of the complete checkpoint directories present, ascending."""
        if not self.root.is_dir():
            return []
        found = (_STEP_DIR.match(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self) -> Path | None:
        """The directory ``latest`` names, or None when no checkpoint was completed yet."""
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        target = self.root / pointer.read_text().strip()
        if not target.is_dir():
            raise CheckpointError(f"{pointer}: names {target.name!r}, which does not exist")
        return target

    def resolve_resume(self, resume: str) -> Path | None:
        """``auto``: latest if any; ``none``: start fresh; else a checkpoint dir (or a run's checkpoints root)."""
        if resume == "none":
            return None
        if resume == "auto":
            return self.latest()
        path = Path(resume)
        if (path / LATEST).is_file():
            return CheckpointManager(path).latest()
        if not path.is_dir():
            raise CheckpointError(f"checkpoint.resume={resume!r}: no such checkpoint directory")
        return path

    def clean_stale(self) -> None:
        """Rank 0: remove what a crash during a save or a prune left behind (see :data:`STALE`)."""
        if _world()[0] != 0 or not self.root.is_dir():
            return
        for pattern in STALE:
            for p in sorted(self.root.glob(pattern)):
                log.warning("removing %s, left by an interrupted checkpoint save or prune", p)
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

    def _discard(self, path: Path) -> None:
        """Rename ``path`` to a hidden ``.trash-<name>-<pid>`` (atomic: no half-deleted ``step_N`` can be seen),
        then delete it; a kill meanwhile leaves only trash for :meth:`clean_stale`."""
        trash = self.root / f".trash-{path.name}-{os.getpid()}"
        if trash.exists():
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def save(self, state: TrainState, write_native: Callable[[Path], None]) -> Path:
        """Collective: write ``step_<state.step>`` atomically (see module doc); returns its final path."""
        rank, world = _world()
        tmp, final = self.root / f".step_{state.step}.tmp", self.step_dir(state.step)
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        write_native(tmp)
        state.rng = _all_gather(capture_rng())
        _barrier()
        names = _broadcast(list_files(tmp) if rank == 0 else None)
        parts = _all_gather(manifest(tmp, names[rank::world]))
        if rank == 0:
            self._publish(tmp, final, state, {k: v for part in parts for k, v in part.items()})
        _barrier()
        return final

    def _publish(self, tmp: Path, final: Path, state: TrainState, files: dict[str, dict]) -> None:
        write_state(tmp, state, files)
        fsync_dir(tmp)
        if final.exists():
            self._discard(final)
        os.replace(tmp, final)
        fsync_dir(self.root)
        atomic_write_text(self.root / LATEST, final.name + "\n")
        log.info("saved checkpoint %s (%d files)", final, len(files))
        self.prune()

    def prune(self) -> None:
        """Delete the oldest complete checkpoints beyond ``keep_last`` (never the one ``latest`` names)."""
        if self.keep_last <= 0:
            return
        latest = self.latest()
        for step in self.steps()[: -self.keep_last]:
            path = self.step_dir(step)
            if latest is None or path.resolve() != latest.resolve():
                self._discard(path)

    def load_state(self, ckpt_dir: Path) -> TrainState:
        """Verify ``ckpt_dir`` (``self.verify``: fast = sizes, full = sha256) and return its TrainState.
        Every rank verifies only its share of the files."""
        rank, world = _world()
        error = None
        try:
            data = read_state(ckpt_dir)
            verify_files(ckpt_dir, data["files"], self.verify, share=(rank, world))
        except CheckpointError as e:
            error = str(e)
        errors = [e for e in _all_gather(error) if e]
        if errors:
            raise CheckpointError(errors[0])
        return TrainState.from_dict(data)
