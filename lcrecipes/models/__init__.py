"""Model families keyed by HF ``model_type``; each maps HF config <-> ``ModelSpec``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from lcrecipes.models.base import ModelFamily
from lcrecipes.models.flops import mfu, training_flops
from lcrecipes.models.llama import LlamaFamily
from lcrecipes.models.qwen2 import Qwen2Family
from lcrecipes.models.spec import ModelSpec

if TYPE_CHECKING:
    from transformers import PretrainedConfig

FAMILIES: dict[str, type[ModelFamily]] = {f.model_type: f for f in (LlamaFamily, Qwen2Family)}


class UnknownFamilyError(KeyError):
    def __str__(self) -> str:
        return f"unknown model family {self.args[0]!r}; known: {', '.join(sorted(FAMILIES))}"


def get_family(model_type: str) -> ModelFamily:
    if model_type not in FAMILIES:
        raise UnknownFamilyError(model_type)
    return FAMILIES[model_type]()


def spec_from_hf_dir(path: str | Path) -> ModelSpec:
    """Read ``config.json`` of a HF checkpoint directory into our spec (no weights are loaded)."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: no config.json (expected a Hugging Face model directory)")
    model_type = json.loads(cfg_path.read_text()).get("model_type")
    from transformers import AutoConfig

    family = get_family(model_type)
    return family.to_spec(AutoConfig.from_pretrained(str(path)))


def hf_config_from_spec(spec: ModelSpec, **overrides) -> PretrainedConfig:
    return get_family(spec.family).to_hf_config(spec, **overrides)


__all__ = ["FAMILIES", "ModelFamily", "ModelSpec", "get_family", "hf_config_from_spec", "mfu",
           "spec_from_hf_dir", "training_flops", "UnknownFamilyError"]
