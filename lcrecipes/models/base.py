"""Model families: one file each, mapping a HF config to our ``ModelSpec`` and back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from lcrecipes.models.spec import ModelSpec

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class ModelFamily:
    """A HF ``model_type`` we can train, convert and evaluate.

    Subclasses set ``model_type`` and ``config_class_name`` (a transformers class, imported on first use so that
    reading recipes does not import transformers) and fill ``_family_kwargs`` / ``_family_fields`` only for
    what differs from the llama layout (e.g. qwen2's fixed qkv bias).
    """

    model_type: ClassVar[str]
    config_class_name: ClassVar[str]
    # HF config keys that the spec covers; anything else non-default is kept in ``spec.extra``.
    _covered: ClassVar[frozenset[str]] = frozenset({
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_parameters",
        "rope_theta", "rope_scaling", "attention_bias", "tie_word_embeddings", "model_type", "transformers_version",
        "layer_types", "architectures", "dtype", "torch_dtype", "_name_or_path", "output_attentions",
    })

    @property
    def config_class(self) -> type[PretrainedConfig]:
        import transformers

        return getattr(transformers, self.config_class_name)

    def to_spec(self, cfg: PretrainedConfig) -> ModelSpec:
        """Read a HF config of this family into our spec."""
        rope = dict(getattr(cfg, "rope_parameters", None) or {})
        theta = float(rope.pop("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
        scaling = rope if rope.get("rope_type", "default") != "default" else None
        heads = cfg.num_attention_heads
        default = self.config_class().to_dict()
        extra = {k: v for k, v in cfg.to_dict().items() if k not in self._covered and default.get(k, object()) != v}
        return ModelSpec(
            family=self.model_type,
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=cfg.num_key_value_heads or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            ffn_hidden_size=cfg.intermediate_size,
            max_position_embeddings=cfg.max_position_embeddings,
            rope_theta=theta,
            rope_scaling=scaling,
            norm_eps=cfg.rms_norm_eps,
            qkv_bias=self._qkv_bias(cfg),
            tie_embeddings=bool(cfg.tie_word_embeddings),
            extra=extra,
        )

    def to_hf_config(self, spec: ModelSpec, **overrides: Any) -> PretrainedConfig:
        """Build this family's HF config from our spec (rope_scaling kept, extra keys passed through)."""
        rope = {"rope_type": "default", **(spec.rope_scaling or {}), "rope_theta": spec.rope_theta}
        kwargs = dict(
            vocab_size=spec.vocab_size,
            hidden_size=spec.hidden_size,
            intermediate_size=spec.ffn_hidden_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.num_kv_heads,
            head_dim=spec.head_dim,
            max_position_embeddings=spec.max_position_embeddings,
            rms_norm_eps=spec.norm_eps,
            rope_parameters=rope,
            tie_word_embeddings=spec.tie_embeddings,
        )
        kwargs.update(self._family_kwargs(spec))
        kwargs.update(spec.extra)
        kwargs.update(overrides)
        return self.config_class(**kwargs)

    def tiny_spec(self, **overrides: Any) -> ModelSpec:
        """A 2-layer, hidden-64 spec of this family for tests and the CPU demo."""
        base = ModelSpec(family=self.model_type, vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=16, ffn_hidden_size=172, max_position_embeddings=4096,
                         qkv_bias=self.default_qkv_bias)
        for k, v in overrides.items():
            setattr(base, k, v)
        return base

    default_qkv_bias: ClassVar[bool] = False

    def _qkv_bias(self, cfg: PretrainedConfig) -> bool:
        return bool(getattr(cfg, "attention_bias", False))

    def _family_kwargs(self, spec: ModelSpec) -> dict:
        return {"attention_bias": spec.qkv_bias}
