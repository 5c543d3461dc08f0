"""The Hugging Face causal LM a backend trains: from ``model.hf_path`` or a seeded random init of the recipe's
architecture, with the CP attention registered (``lcrecipes.parallel.hf``) and the cache off.

Parallelism is applied from outside: the model code is never edited, the attention is chosen by name, and the CP
layout travels as forward kwargs (``cp_forward_kwargs``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lcrecipes.config import RecipeConfig
from lcrecipes.models import ModelSpec, hf_config_from_spec, spec_from_hf_dir

log = logging.getLogger(__name__)


def attention_for(cfg: RecipeConfig) -> str:
    """The attention implementation trained with: ``parallel.sp`` at any CP size (at CP=1 ring runs blockwise, in
    memory linear in the sequence; ulysses/allgather run the dense reference there). Preflight compares it with
    the dense ``sdpa`` reference."""
    return cfg.parallel.sp


def model_spec(cfg: RecipeConfig) -> ModelSpec:
    """The architecture actually trained: the HF directory's when ``model.hf_path`` is set, else the recipe's."""
    if not cfg.model.hf_path:
        return cfg.model.to_spec()
    spec = spec_from_hf_dir(cfg.model.hf_path)
    mine = cfg.model.to_spec()
    diff = [k for k in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "vocab_size")
            if getattr(spec, k) != getattr(mine, k)]
    if diff:
        log.warning("model.hf_path=%s differs from the recipe's model.%s; training the checkpoint's architecture",
                    cfg.model.hf_path, ", model.".join(diff))
    return spec


def special_token_ids(cfg: RecipeConfig) -> dict[str, int | None]:
    """bos/eos/pad ids of the tokenizer the data was prepared with (from the train manifest), so a model trained
    from scratch stops generating at that tokenizer's eos (the HF config defaults, bos=1/eos=2, are someone else's).
    Empty when the data is not prepared yet."""
    import json

    manifest = Path(cfg.data.out_dir) / "train" / "manifest.json"
    if not manifest.is_file():
        return {}
    tok = json.loads(manifest.read_text()).get("tokenizer", {})
    return {"bos_token_id": tok.get("bos_token_id"), "eos_token_id": tok.get("eos_token_id"),
            "pad_token_id": tok.get("pad_token_id")}


def build_hf_model(cfg: RecipeConfig, attention: str) -> torch.nn.Module:
    """An fp32 ``AutoModelForCausalLM`` with attention ``lcr_<attention>``; random init seeded by
    ``train.seed`` (identical on every rank and for any world size)."""
    from transformers import AutoModelForCausalLM

    from lcrecipes.parallel.hf import hf_name, register_hf_attentions

    register_hf_attentions()
    impl = hf_name(attention)
    if cfg.model.hf_path:
        model = AutoModelForCausalLM.from_pretrained(cfg.model.hf_path, dtype=torch.float32, attn_implementation=impl)
    else:
        torch.manual_seed(cfg.train.seed)
        hf_cfg = hf_config_from_spec(cfg.model.to_spec(), use_cache=False, **special_token_ids(cfg))
        model = AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=impl, dtype=torch.float32)
    model.config.use_cache = False
    if cfg.train.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model
