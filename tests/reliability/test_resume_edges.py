"""Deterministic kill points the random fault script only hits sometimes, and what must hold after them.

One process (``lcr train`` through ``bench/fault_trainer.py``, DeepSpeed ZeRO-3 on CPU), 2 steps, a save per
step. Run A is uninterrupted; run B is SIGKILLed right after its final checkpoint is published (before the final
eval), run C during its first save (no checkpoint yet), a third while pruning an old checkpoint; each is then
rerun to the end. Metric rows must equal A's, no broken checkpoint dir may be left, and two identical runs must
save identical RNG states.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lcrecipes.train.metrics import MetricsLogger
from tests.reliability.conftest import REPO, lcr_env, run_lcr, write_recipe

pytestmark = pytest.mark.distributed
KEEP = {"train": ("step", "loss", "grad_norm", "lr", "target_tokens", "tokens_seen"),
        "eval": ("step", "loss", "target_tokens")}  # fmt: skip


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: r.get(k) for k in ("kind", *KEEP[r["kind"]])} for r in rows]


def _state(run_dir: Path) -> dict:
    return json.loads((run_dir / "checkpoints" / "step_2" / "state.json").read_text())


def _kill_then_resume(tiny_data: Path, name: str, kill: dict, **sections) -> tuple[Path, dict | None]:
    """``lcr train`` (via the fault wrapper) SIGKILLed at save hook ``kill``, then resumed with plain ``lcr train``;
    returns the run dir and the state.json of step_2 as it was right after the kill (None if absent)."""
    recipe = write_recipe(tiny_data, name, **sections)
    env = lcr_env(FAULT_SAVE_KILL=json.dumps({"rank": 0, "victim": "all", **kill}))
    killed = subprocess.run([sys.executable, str(REPO / "bench" / "fault_trainer.py"), "train", str(recipe)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-3000:]
    run_dir = tiny_data / "runs" / name
    state = _state(run_dir) if (run_dir / "checkpoints" / "step_2" / "state.json").exists() else None
    resumed = run_lcr("train", str(recipe))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return run_dir, state


@pytest.fixture(scope="module")
def runs(tiny_data) -> dict:
    out = run_lcr("train", str(write_recipe(tiny_data, "edge_a")))
    assert out.returncode == 0, out.stderr[-3000:]
    b_dir, b_state = _kill_then_resume(tiny_data, "edge_b", {"step": 2, "point": "after _publish"})
    c_dir, _ = _kill_then_resume(tiny_data, "edge_c", {"step": 1, "point": "before write_native"})
    return {"a": tiny_data / "runs" / "edge_a", "b": b_dir, "b_state": b_state, "c": c_dir}


def test_kill_after_the_final_checkpoint_loses_no_metric_row(runs) -> None:
    """``Trainer.run`` evaluates before the final save (was: after it, so a run killed in between resumed at
    step == train.steps, logged "nothing to do" and never wrote the final eval row)."""
    assert _rows(runs["b"]) == _rows(runs["a"])


def test_kill_before_the_first_checkpoint_duplicates_no_metric_row(runs) -> None:
    """``Trainer.resume`` with no checkpoint yet drops the rows the killed attempt logged (``truncate_after(0)``;
    was: they were kept and step 1 appeared twice)."""
    assert _rows(runs["c"]) == _rows(runs["a"])


def test_two_identical_runs_save_identical_rng_states(runs) -> None:
    """Python's ``random`` and NumPy's global generator are seeded from ``train.seed`` + rank when the trainer
    starts (``seed_host_rngs``; was: never seeded, so two identical runs saved different RNG states)."""
    a, b = _state(runs["a"])["rng"], runs["b_state"]["rng"]
    assert [r["torch"] for r in a] == [r["torch"] for r in b]  # torch is seeded: equal today
    assert a == b


def test_kill_while_pruning_leaves_no_broken_checkpoint_dir(tiny_data) -> None:
    """``CheckpointManager.prune`` (and ``_publish``'s removal of an old ``final``) first renames ``step_N`` to a
    hidden ``.trash-step_N-<pid>``, then deletes it; the kill lands half-way through that deletion. The resumed
    run's ``clean_stale`` removes the trash (was: ``rmtree`` in place left a ``step_N`` with files missing)."""
    from lcrecipes.checkpoint import CheckpointError, CheckpointManager, verify_checkpoint

    kill = {"step": 3, "point": "rmtree .trash-step_1-"}  # a file of the renamed step_1 removed, not all
    run_dir, _ = _kill_then_resume(tiny_data, "edge_prune", kill, train={"steps": 3})
    manager = CheckpointManager(run_dir / "checkpoints")
    broken = []
    for step in manager.steps():
        try:
            verify_checkpoint(manager.step_dir(step), "full")
        except CheckpointError as e:
            broken.append(str(e))
    assert manager.latest().name == "step_3" and not broken, broken
    assert not [p.name for p in manager.root.iterdir() if p.name.startswith(".")], "trash or temp files left"


def test_metrics_with_a_cut_last_row_resume(tmp_path: Path) -> None:
    """``MetricsLogger.truncate_after`` drops an unterminated last line (a write cut by a crash) and rewrites the
    file atomically (was: a JSONDecodeError on resume, and a truncate-first rewrite)."""
    logger = MetricsLogger(tmp_path, is_main=True, tensorboard=False)
    for step in (1, 2, 3):
        logger.log({"kind": "eval", "step": step, "loss": 1.0, "target_tokens": 1})
    with open(logger.path, "a") as f:
        f.write('{"kind": "train", "step": 4, "lo')
    logger.truncate_after(2)
    assert [json.loads(x)["step"] for x in logger.path.read_text().splitlines()] == [1, 2]
