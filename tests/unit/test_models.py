"""Model families: HF config <-> ModelSpec round trips, tiny configs build real transformers models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lcrecipes.config import load_recipe
from lcrecipes.models import FAMILIES, get_family, hf_config_from_spec, spec_from_hf_dir, training_flops
from lcrecipes.models.spec import ModelSpec

VARIANTS = [
    {},
    {"num_kv_heads": 4},  # MHA
    {"num_kv_heads": 1},  # MQA
    {"tie_embeddings": True},
    {"rope_theta": 1e7, "rope_scaling": {"rope_type": "linear", "factor": 4.0}},
    {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 1024}},
]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(v) or "default")
def test_every_family_round_trips(family: str, variant: dict, tmp_path) -> None:
    fam = get_family(family)
    spec = fam.tiny_spec(**variant)
    cfg = fam.to_hf_config(spec)
    assert cfg.model_type == family
    assert fam.to_spec(cfg) == spec
    cfg.save_pretrained(tmp_path)
    assert spec_from_hf_dir(tmp_path) == spec


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tiny_spec_builds_transformers_model_with_expected_size(family: str) -> None:
    spec = get_family(family).tiny_spec()
    model = AutoModelForCausalLM.from_config(hf_config_from_spec(spec))
    assert sum(p.numel() for p in model.parameters()) == spec.num_params()
    logits = model(torch.randint(0, spec.vocab_size, (1, 8))).logits
    assert logits.shape == (1, 8, spec.vocab_size)


def test_registry_is_keyed_by_model_type() -> None:
    assert {k: v.model_type for k, v in FAMILIES.items()} == {k: k for k in FAMILIES}
    with pytest.raises(KeyError, match="known: llama, qwen2"):
        get_family("gpt2")


def test_recipe_model_section_matches_published_qwen_config() -> None:
    spec = load_recipe(Path(__file__).resolve().parents[2] / "recipes/qwen2.5-7b-1m/doc_ids.yaml").cfg.model.to_spec()
    assert spec.num_params() == pytest.approx(7.62e9, rel=0.01)  # Qwen2.5-7B: 7.61B parameters
    cfg = hf_config_from_spec(spec)
    assert cfg.rope_parameters["rope_theta"] == 1e7 and cfg.num_key_value_heads == 4


def test_training_flops_formula() -> None:
    spec = ModelSpec(vocab_size=10, hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=4,
                     ffn_hidden_size=16)
    n = spec.matmul_params()
    assert n == 2 * (8 * 24 + 8 * 8 + 3 * 8 * 16) + 10 * 8
    # two documents of 3 and 5 tokens: 6*N*T + 6*L*d*(3^2 + 5^2)
    assert training_flops(spec, [3, 5]) == 6 * n * 8 + 6 * 2 * 8 * (9 + 25)
