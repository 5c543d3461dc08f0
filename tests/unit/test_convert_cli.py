"""``lcr convert`` and ``slurm/convert.sh``: the verb converts and verifies, prints the logit difference, and exits
non-zero with a one-line error for bad input."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lcrecipes.cli import main
from lcrecipes.commands.convert import DTYPE_CHOICES, parse_size
from lcrecipes.models import get_family, hf_config_from_spec


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    spec = get_family("qwen2").tiny_spec(tie_embeddings=True)
    AutoModelForCausalLM.from_config(hf_config_from_spec(spec)).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def test_convert_verb_round_trip_with_verify(hf_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["convert", "--from", "hf", "--to", "megatron", str(hf_dir), str(tmp_path / "mg"), "--verify"]) == 0
    assert main(["convert", "--from", "megatron", "--to", "hf", str(tmp_path / "mg"), str(tmp_path / "out"),
                 "--verify", "--dtype", "bf16", "--max-shard-size", "50KB"]) == 0
    out = capsys.readouterr().out
    assert out.count("verify ok: max |logit difference| = ") == 2 and "(hf, bf16)" in out
    assert len(list((tmp_path / "out").glob("model-*-of-*.safetensors"))) > 1


def test_convert_verb_errors_are_one_line(tmp_path: Path, hf_dir: Path, capsys) -> None:
    assert main(["convert", "--from", "megatron", "--to", "hf", str(tmp_path / "nope"), str(tmp_path / "x")]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["convert", "--from", "megatron", "--to", "hf", str(hf_dir), str(tmp_path / "x")]) == 1
    assert "metadata.json: missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", "--from", "hf", "--to", "deepspeed", str(hf_dir), str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_sizes_and_dtype_choices() -> None:
    from lcrecipes.checkpoint.convert.base import DTYPES

    assert parse_size("2GB") == 2 * 10**9 and parse_size("500MiB") == 500 * 2**20 and parse_size("123") == 123
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("2 parsecs")
    assert DTYPE_CHOICES == ("auto", *DTYPES)


def test_slurm_script_runs_without_slurm(hf_dir: Path, tmp_path: Path, repo_root: str) -> None:
    env = {**os.environ, "LCR_HOME": repo_root, "LCR_PYTHON": sys.executable}
    proc = subprocess.run(["bash", "slurm/convert.sh", "hf", "megatron", str(hf_dir), str(tmp_path / "mg")],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "job local: convert hf -> megatron" in proc.stdout and (tmp_path / "mg" / "model_spec.json").is_file()
    usage = subprocess.run(["bash", "slurm/convert.sh", "hf"], cwd=repo_root, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr
