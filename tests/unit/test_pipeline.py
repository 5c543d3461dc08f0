"""``lcr run``'s stages: the commands they build honour the run's overrides, and a ``train.steps: 0`` recipe (a base
model evaluated as it is) runs only its eval stages, on ``model.hf_path``."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lcrecipes.config import load_recipe
from lcrecipes.data.prepare import manifest_tokenizer, prepare
from lcrecipes.data.tokenizer import load_tokenizer
from lcrecipes.pipeline import STAGES
from tests.unit.test_eval_context import save_tiny_llama

RECIPE = "recipes/tiny_cpu/answer_only.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Prepared tiny data (with its trained tokenizer), a suite of 4 in-domain examples at 256 tokens, and a random
    tiny HF model directory holding that tokenizer."""
    root = tmp_path_factory.mktemp("pipeline")
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "t", "limit": 4, "max_new_tokens": 4,
        "tasks": [{"name": "synthetic_in_domain", "path": str(root / "sets" / "in_{length}.jsonl"),
                   "lengths": [256], "kinds": ["full"]}],
        "settings": {"full": True},
    }))  # fmt: skip
    overrides = [f"root={root}", "data.tokenizer=train", f"data.out_dir={root}/data", "data.num_train=4",
                 "data.num_eval=2", f"eval.suite={suite}", "data.synthetic.questions=[profession]"]
    prepare(load_recipe(RECIPE, overrides).cfg.data, "answer_only", splits=["train"])
    tok = load_tokenizer(manifest_tokenizer(root / "data" / "train"))
    save_tiny_llama(tok, root / "model", hidden=32, layers=1, heads=2, kv_heads=1, max_positions=1024)
    return {"root": root, "overrides": overrides, "model": root / "model"}


def _stage(name: str):
    return next(s for s in STAGES if s.name == name)


def _qids(path: Path) -> list[str]:
    return [json.loads(line)["qid"] for line in path.read_text().splitlines()]


def test_eval_sets_are_built_with_the_run_overrides(world):
    """The eval-data stage must see ``--set`` overrides (here: which question types), not the bare recipe."""
    recipe = load_recipe(RECIPE, world["overrides"])
    stage = _stage("eval data")
    assert not stage.done(recipe)
    for cmd in stage.command(recipe, world["overrides"]):
        subprocess.run(cmd, check=True)
    assert stage.done(recipe)
    qids = _qids(world["root"] / "sets" / "in_256.jsonl")
    assert len(qids) == 4 and all(q.startswith("profession:") for q in qids), qids


def test_a_zero_step_recipe_evaluates_its_hf_path_as_it_is(world):
    """train.steps=0: prepare, train and convert are skipped (nothing is written under the run dir but the eval),
    the eval sets are tokenized with the model's own tokenizer and the eval rows come from model.hf_path."""
    model = world["model"]
    overrides = [*world["overrides"], "train.steps=0", f"model.hf_path={model}", "name=untuned",
                 "data.synthetic.questions=[mentor]", f"eval.suite={world['root'] / 'suite0.yaml'}"]
    suite = yaml.safe_load((world["root"] / "suite.yaml").read_text())
    suite["tasks"][0]["path"] = str(world["root"] / "sets0" / "in_{length}.jsonl")
    (world["root"] / "suite0.yaml").write_text(yaml.safe_dump(suite))
    cmd = [sys.executable, "-m", "lcrecipes.cli", "run", RECIPE, *(f"--set={o}" for o in overrides)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "3 skipped" in out.stdout, out.stdout
    run_dir = world["root"] / "untuned"
    assert sorted(p.name for p in run_dir.iterdir()) == ["eval"]
    rows = [json.loads(line) for line in (run_dir / "eval" / "t" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["model_dir"] for r in rows} == {str(model)}
    assert all(q.startswith("mentor:") for q in _qids(world["root"] / "sets0" / "in_256.jsonl"))


def test_a_zero_step_recipe_needs_a_model_and_refuses_to_train(world):
    from lcrecipes.config import ConfigError

    with pytest.raises(ConfigError, match="train.steps"):
        load_recipe(RECIPE, [*world["overrides"], "train.steps=0", "model.hf_path=null"])
    out = subprocess.run([sys.executable, "-m", "lcrecipes.cli", "train", RECIPE, *world["overrides"],
                          "train.steps=0", f"model.hf_path={world['model']}"], capture_output=True, text=True)
    assert out.returncode == 2 and "nothing to train" in out.stderr, out.stderr[-2000:]
