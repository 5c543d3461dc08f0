"""``lcr run``'s stages: the commands they build honour the same overrides as the recipe they run."""

import json
import subprocess

import yaml

from lcrecipes.config import load_recipe
from lcrecipes.data.prepare import prepare
from lcrecipes.pipeline import STAGES


def test_eval_sets_are_built_with_the_run_overrides(tmp_path):
    """The eval-data stage must see ``--set`` overrides (here: which question types), not the bare recipe."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "t", "limit": 4,
        "tasks": [{"name": "synthetic_in_domain", "path": str(tmp_path / "sets" / "in_{length}.jsonl"),
                   "lengths": [256], "kinds": ["full"]}],
        "settings": {"full": True},
    }))
    overrides = [f"root={tmp_path}", "data.tokenizer=train", f"data.out_dir={tmp_path}/data", "data.num_train=4",
                 "data.num_eval=2", f"eval.suite={suite}", "data.synthetic.questions=[profession]"]
    recipe = load_recipe("recipes/tiny_cpu/answer_only.yaml", overrides)
    prepare(recipe.cfg.data, "answer_only", splits=["train"])
    stage = next(s for s in STAGES if s.name == "eval data")
    assert not stage.done(recipe)
    for cmd in stage.command(recipe, overrides):
        subprocess.run(cmd, check=True)
    assert stage.done(recipe)
    qids = [json.loads(line)["qid"] for line in (tmp_path / "sets" / "in_256.jsonl").read_text().splitlines()]
    assert len(qids) == 4 and all(q.startswith("profession:") for q in qids), qids
