"""Corruption is detected and named: every checkpoint file and every shard file carries a sha256 in its manifest.

- a real checkpoint (``lcr train``, DeepSpeed ZeRO-3): each file is listed with size and sha256; a flipped byte in
  any file fails the full verification naming that file (the fast mode checks sizes only, by design); a
  truncated file fails even the fast one; ``lcr train`` refuses to resume from either and names the file;
- packed shards: a flipped byte fails ``ShardDataset(verify=True)`` naming the file; a truncated file is named
  when the split is opened (a size check, without ``verify``).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from lcrecipes.checkpoint import CheckpointError, verify_checkpoint
from lcrecipes.checkpoint.verify import STATE_FILE, list_files
from lcrecipes.data.shards import FILES, ShardDataset
from tests.reliability.conftest import copy_run, run_lcr

pytestmark = pytest.mark.distributed  # a real DeepSpeed run builds the checkpoint


def _flip(path: Path, rng: random.Random) -> int:
    data = bytearray(path.read_bytes())
    at = rng.randrange(len(data))
    data[at] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return at


def _truncate(path: Path, n: int = 1) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(len(data) - n, 0)])


def test_every_checkpoint_file_is_listed_with_size_and_sha256(tiny_run) -> None:
    state = json.loads((tiny_run["ckpt"] / STATE_FILE).read_text())
    assert sorted(state["files"]) == list_files(tiny_run["ckpt"]) and any("native/" in n for n in state["files"])
    for name, rec in state["files"].items():
        assert rec["size"] == (tiny_run["ckpt"] / name).stat().st_size and len(rec["sha256"]) == 64
    assert verify_checkpoint(tiny_run["ckpt"], "full")["step"] == 2


def test_a_flipped_byte_in_any_file_fails_full_verification_naming_it(tiny_run, tmp_path) -> None:
    rng = random.Random(0)
    for name in list_files(tiny_run["ckpt"]):
        ckpt = tmp_path / name.replace("/", "_")
        shutil.copytree(tiny_run["ckpt"], ckpt)
        at = _flip(ckpt / name, rng)
        verify_checkpoint(ckpt, "fast")  # sizes only: a flipped byte is the full mode's job
        with pytest.raises(CheckpointError, match="sha256 differs") as err:
            verify_checkpoint(ckpt, "full")
        assert str(ckpt / name) in str(err.value), (name, at)


def test_a_truncated_or_missing_file_fails_fast_verification_naming_it(tiny_run, tmp_path) -> None:
    for name in list_files(tiny_run["ckpt"]):
        ckpt = tmp_path / name.replace("/", "_")
        shutil.copytree(tiny_run["ckpt"], ckpt)
        _truncate(ckpt / name)
        with pytest.raises(CheckpointError, match="truncated") as err:
            verify_checkpoint(ckpt, "fast")
        assert str(ckpt / name) in str(err.value)
        (ckpt / name).unlink()
        with pytest.raises(CheckpointError, match="missing"):
            verify_checkpoint(ckpt, "fast")


def test_a_damaged_state_json_is_named(tiny_run, tmp_path) -> None:
    ckpt = shutil.copytree(tiny_run["ckpt"], tmp_path / "c")
    _truncate(ckpt / STATE_FILE, 40)
    with pytest.raises(CheckpointError, match=f"{ckpt / STATE_FILE}: not valid JSON"):
        verify_checkpoint(ckpt, "fast")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_lcr_train_refuses_to_resume_from_a_damaged_checkpoint(tiny_run, tmp_path, damage) -> None:
    """``lcr train`` (checkpoint.verify=full for the flip) exits 2 naming the file, and does not train."""
    run_dir = copy_run(tiny_run, tmp_path / "run")
    name = "native/zero_pp_rank_0_mp_rank_00_optim_states.pt"
    target = run_dir / "checkpoints" / "step_2" / name
    _truncate(target, 100) if damage == "truncate" else _flip(target, random.Random(1))
    verify = "fast" if damage == "truncate" else "full"
    out = run_lcr("train", str(tiny_run["recipe"]), f"run_dir={run_dir}", "train.steps=3",
                  f"checkpoint.verify={verify}")  # fmt: skip
    assert out.returncode == 2, out.stderr[-3000:]
    assert str(target) in out.stderr.splitlines()[-1], out.stderr[-2000:]
    assert not (run_dir / "checkpoints" / "step_3").exists()


# ----- packed shards ----------------------------------------------------------------------------------------------
def _shard_files(split: Path) -> list[Path]:
    m = json.loads((split / "manifest.json").read_text())
    return [split / s["name"] / n for s in m["shards"] for n in s["sha256"]]


def test_every_shard_file_has_a_sha256_and_a_flipped_byte_is_named(tiny_run, tmp_path) -> None:
    split = tmp_path / "train"
    shutil.copytree(tiny_run["tmp"] / "data" / "train", split)
    files = _shard_files(split)
    assert {f.name for f in files} >= set(FILES)
    ShardDataset(split, verify=True)
    rng = random.Random(2)
    for f in files:
        backup = f.read_bytes()
        _flip(f, rng)
        with pytest.raises(ValueError, match="sha256 differs") as err:
            ShardDataset(split, verify=True)
        assert str(f) in str(err.value)
        f.write_bytes(backup)


@pytest.mark.parametrize("name", sorted(FILES))
def test_a_truncated_shard_file_is_named_when_the_split_is_opened(tiny_run, tmp_path, name) -> None:
    """Without ``verify=True`` (the trainer's ``open_split`` never passes it) ``ShardDataset`` checks each file's
    size on open (from n_sequences and seq_len; cu_seqlens from offsets[-1]) and names a truncated one (was: read
    silently as 0-token sequences or shorter masks, or an unrelated numpy error later)."""
    split = tmp_path / "train"
    shutil.copytree(tiny_run["tmp"] / "data" / "train", split)
    target = split / "shard_00000" / name
    _truncate(target, 8)
    with pytest.raises(Exception, match=str(target)):
        ds = ShardDataset(split)
        for i in range(len(ds)):
            ds.numpy_item(i)
