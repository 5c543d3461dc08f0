"""Qwen2 family (Qwen2.5, incl. Qwen2.5-*-Instruct-1M): like llama but qkv projections always carry a bias."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lcrecipes.models.base import ModelFamily
from lcrecipes.models.spec import ModelSpec

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class Qwen2Family(ModelFamily):
    model_type = "qwen2"
    config_class_name = "Qwen2Config"
    default_qkv_bias = True

    def _qkv_bias(self, cfg: PretrainedConfig) -> bool:
        return True  # Qwen2Attention hard-codes bias=True on q/k/v

    def _family_kwargs(self, spec: ModelSpec) -> dict:
        if not spec.qkv_bias:
            raise ValueError("model.qkv_bias: qwen2 models always have a qkv bias; set it to true")
        return {}
