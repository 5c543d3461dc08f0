"""Recipe config: inheritance, overrides, errors that name key and file, every shipped recipe validates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lcrecipes.config import ConfigError, load_recipe, save_resolved

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml"))


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_every_shipped_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.cfg.parallel.backend in ("deepspeed", "megatron")
    again = load_recipe(path)
    assert again.config_hash() == recipe.config_hash()  # resolution is deterministic


def test_defaults_chain_parents_first_then_child(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", {"train": {"lr": 0.1, "steps": 70}, "model": {"hidden_size": 64}})
    _write(tmp_path, "b.yaml", {"defaults": ["a"], "train": {"lr": 0.2}})
    child = _write(tmp_path, "c.yaml", {"defaults": ["b.yaml"], "name": "x", "train": {"min_lr": 0.0}})
    r = load_recipe(child)
    assert (r.cfg.train.lr, r.cfg.train.steps, r.cfg.train.min_lr, r.cfg.name) == (0.2, 70, 0.0, "x")
    assert r.cfg.run_dir == "runs/x"
    assert r.sources["train.lr"].endswith("b.yaml") and r.sources["train.steps"].endswith("a.yaml")


def test_override_wins_and_is_typed(tmp_path: Path) -> None:
    path = _write(tmp_path, "r.yaml", {"train": {"lr": 0.1}})
    r = load_recipe(path, ["train.lr=3e-4", "parallel.zero_stage=2", "model.rope_scaling={rope_type: linear}"])
    assert r.cfg.train.lr == pytest.approx(3e-4) and isinstance(r.cfg.train.lr, float)
    assert r.cfg.parallel.zero_stage == 2
    assert r.cfg.model.rope_scaling == {"rope_type": "linear"}
    assert r.sources["train.lr"] == "command line"


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "r.yaml", {"train": {"lrr": 0.1}})
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert e.value.key == "train.lrr" and str(path) in str(e.value)


def test_unknown_key_in_a_parent_names_the_parent(tmp_path: Path) -> None:
    parent = _write(tmp_path, "p.yaml", {"model": {"hiden_size": 3}})
    child = _write(tmp_path, "c.yaml", {"defaults": ["p"]})
    with pytest.raises(ConfigError) as e:
        load_recipe(child)
    assert e.value.key == "model.hiden_size" and e.value.where == str(parent.resolve())


def test_wrong_type_names_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "r.yaml", {"train": {"steps": "many"}})
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert e.value.key == "train.steps" and str(path) in str(e.value)


def test_bad_override_names_command_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_recipe(None, ["train.nope=1"])
    assert "command line" in str(e.value) and e.value.key == "train.nope"
    with pytest.raises(ConfigError):
        load_recipe(None, ["train.lr"])


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["parallel.cp=3", "launch.gpus_per_node=4"], "parallel.cp"),  # cp does not divide the ranks
        (["parallel.backend=megatron", "parallel.tp=3", "launch.gpus_per_node=3"], "parallel.tp"),  # heads % tp
        (["parallel.tp=2", "launch.gpus_per_node=2"], "parallel.tp"),  # deepspeed has no TP
        (["parallel.backend=megatron", "parallel.pp=3", "launch.gpus_per_node=3"], "parallel.pp"),
        (["parallel.sp=ulysses", "parallel.cp=8", "launch.gpus_per_node=8", "data.seq_len=4096"], "parallel.sp"),
        (["parallel.cp=2", "launch.gpus_per_node=2", "data.seq_len=2050"], "data.seq_len"),
        (["train.min_lr=1.0", "train.lr=0.1"], "train.min_lr"),
        (["strategy.name=telepathy"], "strategy.name"),
        (["model.family=gpt2"], "model.family"),
        (["model.family=qwen2", "model.qkv_bias=false"], "model.qkv_bias"),
        (["parallel.zero_stage=4"], "parallel.zero_stage"),
    ],
)
def test_impossible_combinations_fail_before_anything_runs(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_recipe(None, overrides)
    assert e.value.key == key, str(e.value)
    assert "command line" in str(e.value) or "defaults" in str(e.value)


def test_validation_error_names_file_that_set_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "r.yaml", {"parallel": {"cp": 3}, "launch": {"gpus_per_node": 4}})
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert e.value.key == "parallel.cp" and e.value.where == str(path.resolve())


def test_defaults_cycle_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", {"defaults": ["b"]})
    b = _write(tmp_path, "b.yaml", {"defaults": ["a"]})
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(b)


def test_resolved_config_written_to_run_dir(tmp_path: Path) -> None:
    r = load_recipe(REPO / "recipes/tiny_cpu/doc_ids.yaml", ["train.steps=3"])
    save_resolved(r, tmp_path)
    back = load_recipe(tmp_path / "config.yaml")
    assert back.cfg == r.cfg
    assert (tmp_path / "meta.json").read_text().count("config_hash") == 1


def _lcr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lcrecipes.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_cli_config_show_prints_override() -> None:
    out = _lcr("config", "show", "recipes/tiny_cpu/answer_only.yaml", "train.lr=3e-4")
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["train"]["lr"] == pytest.approx(3e-4)


def test_cli_misspelt_key_exits_nonzero_naming_key_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.yaml", {"defaults": [str(REPO / "recipes/tiny_cpu/answer_only")],
                                         "trian": {"lr": 1}})
    out = _lcr("config", "show", str(path))
    assert out.returncode != 0
    assert "trian" in out.stderr and str(path) in out.stderr


def test_the_model_a_recipe_evaluates():
    """eval.hf_dir if set; else model.hf_path for a base model (train.steps 0); else the run's HF export."""
    assert load_recipe("recipes/tiny_cpu/base.yaml").cfg.eval_model_dir() == "recipes/tiny_cpu/pretrained"
    assert load_recipe("recipes/tiny_cpu/doc_ids.yaml").cfg.eval_model_dir() == "runs/tiny_cpu/doc_ids/hf"
    assert load_recipe("recipes/tiny_cpu/doc_ids.yaml", ["eval.hf_dir=x"]).cfg.eval_model_dir() == "x"
