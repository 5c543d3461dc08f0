"""Fixtures of the reliability tests: tiny recipes, ``lcr`` in a subprocess, and one real trained checkpoint.

The checkpoint comes from a real ``lcr train`` (one process, DeepSpeed ZeRO-3 on CPU, 2 steps, a save per step) on
synthetic shards (64-token sequences, vocabulary 64); tests copy it before damaging it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SEQ, VOCAB = 64, 64


def write_recipe(tmp: Path, name: str, **sections) -> Path:
    """A tiny recipe (2 layers, hidden 64) on ``tmp/data``; ``sections`` override per section."""
    base = {
        "name": name, "run_dir": str(tmp / "runs" / name),
        "model": {"family": "llama", "vocab_size": VOCAB, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
                  "num_kv_heads": 2, "head_dim": 16, "ffn_hidden_size": 128, "max_position_embeddings": 256},
        "data": {"kind": "lm", "out_dir": str(tmp / "data"), "seq_len": SEQ},
        "parallel": {"backend": "deepspeed", "cp": 1, "sp": "ring", "zero_stage": 3, "timeout_s": 60},
        "train": {"steps": 2, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 1, "log_every": 1, "eval_batches": 1,
                  "tensorboard": False},
        "checkpoint": {"every": 1, "keep_last": 2},
        "launch": {"gpus_per_node": 1},
    }  # fmt: skip
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values} if isinstance(values, dict) else values
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def lcr_env(**extra: str) -> dict[str, str]:
    """The environment of a child ``lcr``: one thread, offline, no inherited torchrun variables."""
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("FAULT_")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    return {**env, **extra}


def run_lcr(*args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    """``python -m lcrecipes.cli ARGS`` (one process) from the repo root."""
    return subprocess.run([sys.executable, "-m", "lcrecipes.cli", *args], cwd=REPO, env=lcr_env(**env),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A directory whose ``data/`` holds synthetic train/eval shards for :func:`write_recipe` recipes."""
    from lcrecipes.train.synthetic import write_synthetic_shards

    tmp = tmp_path_factory.mktemp("reliability")
    write_synthetic_shards(tmp / "data", seq_len=SEQ, n_train=16, n_eval=4, vocab_size=VOCAB)
    return tmp


@pytest.fixture(scope="session")
def tiny_run(tiny_data) -> dict:
    """A finished 2-step single-process run: ``{"tmp", "recipe", "run_dir", "ckpt"}`` (``ckpt`` = step_2)."""
    tmp = tiny_data
    recipe = write_recipe(tmp, "tiny")
    out = run_lcr("train", str(recipe))
    assert out.returncode == 0, out.stderr[-4000:]
    run_dir = tmp / "runs" / "tiny"
    return {"tmp": tmp, "recipe": recipe, "run_dir": run_dir, "ckpt": run_dir / "checkpoints" / "step_2"}


def copy_run(tiny_run: dict, dest: Path) -> Path:
    """A copy of the tiny run dir (to damage) at ``dest``."""
    shutil.copytree(tiny_run["run_dir"], dest)
    return dest
