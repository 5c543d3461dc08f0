"""Llama family (Llama 2/3.x): RMSNorm, SwiGLU, RoPE (llama3 scaling kept), GQA, optional qkv bias."""

from lcrecipes.models.base import ModelFamily


class LlamaFamily(ModelFamily):
    model_type = "llama"
    config_class_name = "LlamaConfig"
