"""The memory planner: its activation model against tensors autograd really saves, and layout advice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lcrecipes.config import load_recipe
from lcrecipes.launch.plan import GiB, activation_bytes_per_token_layer, plan, recommend
from lcrecipes.models import get_family, hf_config_from_spec

REPO = Path(__file__).resolve().parents[2]


def _saved_bytes(model: torch.nn.Module, ids: torch.Tensor) -> int:
    """Bytes of distinct storages autograd keeps for backward during one forward pass."""
    seen: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:  # weights (and views of them) are not activations
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, use_cache=False).logits.sum().backward()
    return sum(seen.values())


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_activation_model_matches_saved_tensors_of_tiny_model(family: str) -> None:
    torch.manual_seed(0)
    tokens = 256
    ids = torch.randint(0, 512, (1, tokens))
    per_layer = []
    for layers in (2, 4):
        spec = get_family(family).tiny_spec(num_layers=layers)
        model = AutoModelForCausalLM.from_config(hf_config_from_spec(spec), attn_implementation="sdpa")
        per_layer.append(_saved_bytes(model, ids))
    measured = (per_layer[1] - per_layer[0]) / (2 * tokens)
    predicted = activation_bytes_per_token_layer(get_family(family).tiny_spec(), dtype_bytes=4)
    print(f"{family}: predicted {predicted} B/token/layer, measured {measured:.0f}")
    assert predicted == pytest.approx(measured, rel=0.05), (predicted, measured)


def test_plan_splits_state_by_layout() -> None:
    cfg = load_recipe(REPO / "recipes/qwen2.5-7b-1m/doc_ids.yaml").cfg
    p1, p2 = plan(cfg, tp=4, cp=16), plan(cfg, tp=4, cp=8, pp=1)
    assert p1.activations < p2.activations and p1.weights == p2.weights  # CP splits tokens, not weights
    assert plan(cfg, tp=2, cp=32).weights == pytest.approx(2 * p1.weights, rel=1e-6)


def test_recipe_fits_h100_and_recommendation_fits() -> None:
    cfg = load_recipe(REPO / "recipes/qwen2.5-7b-1m/doc_ids.yaml").cfg
    assert plan(cfg).total < 80 * GiB * 0.9
    best = recommend(cfg, 80 * GiB)
    assert best is not None and best.total <= 80 * GiB * 0.9
    assert recommend(cfg, 1 * GiB) is None
