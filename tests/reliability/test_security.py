"""Security: no unpickling of files a user may not trust, and shell scripts that never interpret user values.

- a scan of ``lcrecipes/``: every ``torch.load`` passes ``weights_only=True``; no ``pickle.load(s)``,
  ``np.load(allow_pickle=True)``, ``yaml.load`` without a safe loader, ``eval``/``exec``, ``shell=True`` or
  ``os.system``;
- resuming from a checkpoint whose native file holds a pickle payload (its manifest updated to match, as an
  attacker would) must not run the payload;
- ``slurm/train_1m.sh`` and ``slurm/eval.sh`` run for real under bash, with ``srun``/``scontrol``/the Python
  interpreter replaced by recorders: recipe paths, overrides and eval arguments holding spaces, both quotes,
  ``$(...)`` and backticks reach the command as the exact arguments given, and nothing is executed.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.conftest import REPO, copy_run, lcr_env, run_lcr, write_recipe

HOSTILE = "a b 'q' \"d\" $(touch PWNED) `touch PWNED2` *"


# ----- static scan ------------------------------------------------------------------------------------------------
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f"{getattr(f.value, 'id', '?')}.{f.attr}" if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            yield name, {k.arg: k.value for k in node.keywords}, node


def _const(node) -> object:
    return node.value if isinstance(node, ast.Constant) else None


def test_no_unsafe_deserialisation_or_shell_in_the_package() -> None:
    bad = []
    for path in sorted((REPO / "lcrecipes").rglob("*.py")):
        for name, kw, node in _calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(REPO)}:{node.lineno}: {name}"
            if name == "torch.load" and _const(kw.get("weights_only")) is not True:
                bad.append(f"{where} without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "os.system", "marshal.loads") or name in ("eval", "exec"):
                bad.append(where)
            if name == "np.load" and _const(kw.get("allow_pickle")) not in (None, False):
                bad.append(f"{where} with allow_pickle")
            if name == "yaml.load" and "Safe" not in ast.unparse(kw.get("Loader", ast.Constant(""))):
                bad.append(f"{where} without a safe loader")
            if _const(kw.get("shell")) is True:
                bad.append(f"{where} with shell=True")
    assert not bad, "\n".join(bad)


# ----- resume must not unpickle ------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this creates ``marker`` (what an attacker's code would do instead)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.mark.distributed
def test_resume_does_not_run_a_pickle_payload_hidden_in_a_checkpoint(tiny_run, tmp_path) -> None:
    """``DeepSpeedBackend.load`` wraps DeepSpeed's checkpoint engine (whose ``load`` is ``torch.load(...,
    weights_only=False)``) to load with ``weights_only=True`` and DeepSpeed's checkpoint classes allow-listed
    (``lcrecipes.checkpoint.safe_load``, shared with the converter): resuming from a checkpoint from elsewhere
    (``checkpoint.resume=<dir>``) cannot run code; it exits 2 naming the file."""
    import torch

    run_dir = copy_run(tiny_run, tmp_path / "run")
    ckpt = run_dir / "checkpoints" / "step_2"
    marker = tmp_path / "PAYLOAD_RAN"
    for name in ("zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        target = ckpt / "native" / name
        state = torch.load(target, map_location="cpu", weights_only=False)  # our own file: trusted here
        state["extra_payload"] = _Payload(marker)
        torch.save(state, target)
    manifest = json.loads((ckpt / "state.json").read_text())
    for name, rec in manifest["files"].items():  # the attacker keeps the manifest consistent
        data = (ckpt / name).read_bytes()
        rec.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (ckpt / "state.json").write_text(json.dumps(manifest))
    out = run_lcr("train", str(tiny_run["recipe"]), f"run_dir={tmp_path / 'fresh'}", "train.steps=3",
                  f"checkpoint.resume={ckpt}", "checkpoint.verify=full")  # fmt: skip
    assert not marker.exists(), "resuming unpickled an arbitrary object from the checkpoint"
    assert out.returncode == 2, "a checkpoint holding non-tensor objects outside the allow-list was accepted"
    assert "refused to unpickle" in out.stderr.splitlines()[-1] and "native/zero_pp_rank_0" in out.stderr, \
        out.stderr[-2000:]


@pytest.mark.distributed
def test_weights_only_resume_reads_a_zero_stage_2_checkpoint(tiny_data) -> None:
    """The allow-list covers what ZeRO stages 1-2 pickle besides tensors (``fragment_address`` slice records);
    stage 3 is resumed by the other reliability tests."""
    recipe = write_recipe(tiny_data, "zero2", parallel={"zero_stage": 2})
    assert run_lcr("train", str(recipe)).returncode == 0
    out = run_lcr("train", str(recipe), "train.steps=3")
    assert out.returncode == 0 and "resumed from" in out.stderr, out.stderr[-3000:]


# ----- shell scripts ----------------------------------------------------------------------------------------------
RECORDER = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["RECORD_TO"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
if sys.argv[1:3] == ["show", "hostnames"]:
    print("node01")
"""


def _recorders(tmp: Path) -> Path:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name in ("srun", "scontrol", "fakepython"):
        (bin_dir / name).write_text(RECORDER)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _records(path: Path) -> list[list[str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _no_pwned(*dirs: Path) -> None:
    for d in dirs:
        assert not list(d.rglob("PWNED*")), f"a shell ran a user value in {d}"


def test_train_1m_sh_passes_hostile_values_through_unchanged(tmp_path) -> None:
    bin_dir, record = _recorders(tmp_path), tmp_path / "calls.jsonl"
    recipe_dir = tmp_path / f"dir {HOSTILE}"
    recipe_dir.mkdir()
    recipe = recipe_dir / "r.yaml"
    shutil.copy(REPO / "recipes" / "_base" / "default.yaml", recipe)
    run_dir = tmp_path / f"run {HOSTILE}"
    overrides = [f"name={HOSTILE}", f"run_dir={run_dir}", "train.steps=3"]
    env = lcr_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", RECORD_TO=str(record), LCR_HOME=str(REPO),
                  LCR_PYTHON=sys.executable, SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node[01-02]")  # fmt: skip
    out = subprocess.run(["bash", str(REPO / "slurm" / "train_1m.sh"), str(recipe), *overrides], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    srun = [c for c in _records(record) if c[0] == "srun"]
    assert len(srun) == 1
    args = srun[0][srun[0].index(sys.executable) :]
    assert args[:5] == [sys.executable, "-m", "lcrecipes.cli", "train", str(recipe)]
    assert args[5].startswith("parallel.timeout_s=") and args[6:] == overrides
    assert (run_dir / "logs").is_dir()  # the script created the run dir named by the hostile value, verbatim
    _no_pwned(tmp_path, REPO)


def test_eval_sh_passes_hostile_values_through_unchanged(tmp_path) -> None:
    bin_dir, record = _recorders(tmp_path), tmp_path / "calls.jsonl"
    args = [f"model {HOSTILE}", f"suite {HOSTILE}.yaml", "doc_ids", f"out {HOSTILE}"]
    env = lcr_env(RECORD_TO=str(record), LCR_HOME=str(REPO), LCR_PYTHON=str(bin_dir / "fakepython"),
                  SLURM_ARRAY_TASK_ID="3", SLURM_JOB_ID="77")  # fmt: skip
    out = subprocess.run(["bash", str(REPO / "slurm" / "eval.sh"), *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert _records(record) == [["fakepython", "-m", "lcrecipes.launch.eval_array", "run", args[0], "--suite", args[1],
                                 "--strategy", args[2], "--out", args[3], "--index", "3"]]  # fmt: skip
    _no_pwned(tmp_path, REPO)
