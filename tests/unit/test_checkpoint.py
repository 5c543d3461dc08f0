"""Checkpoint layout, atomic save protocol, ``latest`` pointer, verification, pruning and RNG capture (one process;
the multi-rank DeepSpeed save/resume is in tests/distributed/test_train_deepspeed.py)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lcrecipes.checkpoint import CheckpointError, CheckpointManager, TrainState, verify_checkpoint
from lcrecipes.checkpoint.rng import capture_rng, restore_rng


def _writer(payload: bytes = b"weights"):
    def write(d: Path) -> None:
        (d / "native").mkdir()
        (d / "native" / "model.pt").write_bytes(payload)
        (d / "native" / "optim.pt").write_bytes(payload * 3)

    return write


def _save(m: CheckpointManager, step: int, **kw) -> Path:
    return m.save(TrainState(step=step, config_hash="abc", backend="test", sampler={"epoch": 0, "position": step}),
                  _writer(**kw))


def test_save_writes_state_json_and_latest(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path / "checkpoints")
    path = _save(m, 3)
    assert path == tmp_path / "checkpoints" / "step_3" and m.latest() == path
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_3\n"
    state = verify_checkpoint(path, "full")
    assert state["step"] == 3 and state["config_hash"] == "abc" and state["sampler"]["position"] == 3
    assert sorted(state["files"]) == ["native/model.pt", "native/optim.pt"]
    assert state["files"]["native/optim.pt"]["size"] == 21 and len(state["rng"]) == 1
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


def test_verify_names_the_bad_file(tmp_path: Path) -> None:
    path = _save(CheckpointManager(tmp_path), 1)
    model = path / "native" / "model.pt"
    model.write_bytes(b"WEIGHTS")  # same size, other bytes: only the full check sees it
    verify_checkpoint(path, "fast")
    with pytest.raises(CheckpointError, match=r"model\.pt: sha256 differs"):
        verify_checkpoint(path, "full")
    model.write_bytes(b"w")
    with pytest.raises(CheckpointError, match=r"model\.pt: size 1 bytes, expected 7"):
        verify_checkpoint(path, "fast")
    model.unlink()
    with pytest.raises(CheckpointError, match=r"model\.pt: missing"):
        verify_checkpoint(path, "fast")


def test_verify_rejects_unlisted_files_and_a_broken_state_json(tmp_path: Path) -> None:
    path = _save(CheckpointManager(tmp_path), 1)
    (path / "native" / "stray.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"stray\.bin: not listed"):
        verify_checkpoint(path)
    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"state\.json: not valid JSON"):
        verify_checkpoint(path)


def test_a_crash_during_save_keeps_the_previous_latest(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path)
    first = _save(m, 1)

    def crash(d: Path) -> None:
        (d / "partial.pt").write_bytes(b"half")
        raise KeyboardInterrupt  # the process dies mid-write

    with pytest.raises(KeyboardInterrupt):
        m.save(TrainState(step=2), crash)
    assert m.latest() == first and m.steps() == [1]
    assert (tmp_path / ".step_2.tmp").exists()
    m.clean_stale()
    assert not (tmp_path / ".step_2.tmp").exists()


def test_keep_last_prunes_older_checkpoints(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path, keep_last=2)
    for step in (2, 4, 6):
        _save(m, step)
    assert m.steps() == [4, 6] and m.latest().name == "step_6"
    keep_all = CheckpointManager(tmp_path / "all", keep_last=0)
    for step in (1, 2, 3):
        _save(keep_all, step)
    assert keep_all.steps() == [1, 2, 3]


def test_resume_resolution(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path / "checkpoints")
    assert m.resolve_resume("auto") is None
    path = _save(m, 5)
    assert m.resolve_resume("auto") == path and m.resolve_resume("none") is None
    assert m.resolve_resume(str(path)) == path
    assert m.resolve_resume(str(tmp_path / "checkpoints")) == path  # another run's checkpoints root
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        m.resolve_resume(str(tmp_path / "nope"))
    (tmp_path / "checkpoints" / "latest").write_text("step_9\n")
    with pytest.raises(CheckpointError, match="step_9"):
        m.latest()


def test_load_state_verifies_and_round_trips(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path, verify="full")
    path = _save(m, 7)
    state = m.load_state(path)
    assert (state.step, state.backend, state.sampler) == (7, "test", {"epoch": 0, "position": 7})
    data = json.loads((path / "state.json").read_text())
    data["format"] = 99
    (path / "state.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="format 99"):
        m.load_state(path)


def test_rng_capture_and_restore_replays_every_generator() -> None:
    saved = json.loads(json.dumps(capture_rng()))  # survives JSON
    first = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng(saved)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def test_prune_renames_to_hidden_trash_before_deleting(tmp_path: Path, monkeypatch) -> None:
    """A kill during the deletion of an old checkpoint leaves only a hidden ``.trash-*`` dir, never a half-deleted
    ``step_N``; ``clean_stale`` removes it (and a ``.latest.*.tmp``) on the next start, with a warning."""
    from lcrecipes.checkpoint import manager

    m = CheckpointManager(tmp_path, keep_last=1)
    _save(m, 1)
    seen, rmtree = [], manager.shutil.rmtree

    def killed_rmtree(path, ignore_errors=False):  # the process dies as it starts deleting the old checkpoint
        if Path(path).name.startswith(".trash-"):
            seen.append(Path(path).name)
            raise KeyboardInterrupt
        rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(manager.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        _save(m, 2)
    monkeypatch.undo()
    assert seen == [f".trash-step_1-{os.getpid()}"] and m.steps() == [2] and m.latest().name == "step_2"
    (tmp_path / ".latest.abc123.tmp").write_text("step_9\n")
    m.clean_stale()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_2"]
    verify_checkpoint(m.latest(), "full")


def test_resaving_a_step_replaces_it_through_trash(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path, keep_last=0)
    _save(m, 1, payload=b"old")
    _save(m, 1, payload=b"new")
    assert (tmp_path / "step_1" / "native" / "model.pt").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_1"]


def test_seed_host_rngs_makes_python_and_numpy_draws_repeatable() -> None:
    from lcrecipes.checkpoint.rng import seed_host_rngs

    seed_host_rngs(7, rank=1)
    first = (random.random(), float(np.random.rand()), capture_rng())
    seed_host_rngs(7, rank=1)
    again = (random.random(), float(np.random.rand()), capture_rng())
    assert first == again
    seed_host_rngs(7, rank=0)
    assert random.random() != first[0]  # each rank its own stream


def test_safe_load_reads_tensors_and_refuses_a_pickle_payload(tmp_path: Path) -> None:
    import pathlib

    from lcrecipes.checkpoint.safe_load import load_weights_only

    class Payload:
        def __reduce__(self):
            return pathlib.Path.touch, (tmp_path / "RAN",)

    torch.save({"w": torch.ones(2), "n": 3}, tmp_path / "ok.pt")
    assert torch.equal(load_weights_only(tmp_path / "ok.pt")["w"], torch.ones(2))
    torch.save({"w": torch.ones(2), "p": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused to unpickle global") as err:
        load_weights_only(tmp_path / "evil.pt")
    assert "\n" not in str(err.value) and not (tmp_path / "RAN").exists()
    (tmp_path / "torn.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"torn\.pt: cannot load"):
        load_weights_only(tmp_path / "torn.pt")
