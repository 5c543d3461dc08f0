"""A CPU reference forward of a GPT model stored in Megatron-Core's layout, for ``--verify``.

It interprets the Megatron tensors the way Megatron-Core's modules do (``SelfAttention`` splits the fused qkv
activations per KV group, ``MLP`` chunks fc1 into [gate, up], ``RotaryEmbedding`` builds the RoPE frequencies),
without going through the HF <-> Megatron converter, so a converter bug shows up as a logit difference. Megatron's
own ``GPTModel`` needs CUDA; the distributed tests check this forward against it (over gloo, on CPU).
Layers are streamed: ``layers`` yields one layer's tensors at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from lcrecipes.models.megatron_rope import MEGATRON_LLAMA3_FIXED, rope_kwargs
from lcrecipes.models.spec import ModelSpec


def rope_inv_freq(spec: ModelSpec) -> Tensor:
    """``[head_dim / 2]`` inverse frequencies as Megatron's ``RotaryEmbedding`` computes them (llama3 scaling
    included); linear scaling divides the positions instead (``seq_len_interpolation_factor``)."""
    d = spec.head_dim
    inv = 1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    kw = rope_kwargs(spec)
    if not kw.get("rope_scaling"):
        return inv
    factor, old = kw["rope_scaling_factor"], MEGATRON_LLAMA3_FIXED["original_max_position_embeddings"]
    low, high = MEGATRON_LLAMA3_FIXED["low_freq_factor"], MEGATRON_LLAMA3_FIXED["high_freq_factor"]
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) * ~(wavelen > old / low)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(spec: ModelSpec, seq: int) -> tuple[Tensor, Tensor]:
    """``cos``/``sin`` of shape ``[seq, head_dim]`` (frequencies repeated, non-interleaved halves)."""
    pos = torch.arange(seq, dtype=torch.float32)
    factor = rope_kwargs(spec).get("seq_len_interpolation_factor")
    if factor:
        pos = pos / factor
    freqs = torch.outer(pos, rope_inv_freq(spec))
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def _rms(x: Tensor, w: Tensor, eps: float) -> Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def attention(spec: ModelSpec, x: Tensor, layer: dict[str, Tensor], cos: Tensor, sin: Tensor) -> Tensor:
    """Causal self-attention from the fused ``linear_qkv``: ``x [batch, seq, hidden]`` -> same shape."""
    b, s, _ = x.shape
    g, d, per_group = spec.num_kv_heads, spec.head_dim, spec.num_heads // spec.num_kv_heads
    mixed = F.linear(x, layer["self_attention.linear_qkv.weight"], layer.get("self_attention.linear_qkv.bias"))
    mixed = mixed.view(b, s, g, (per_group + 2) * d)
    q, k, v = mixed.split([per_group * d, d, d], dim=-1)
    q = q.reshape(b, s, g * per_group, d).transpose(1, 2)  # [batch, heads, seq, head_dim]
    k, v = k.transpose(1, 2), v.transpose(1, 2)  # [batch, kv_heads, seq, head_dim]
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=per_group > 1)
    return F.linear(out.transpose(1, 2).reshape(b, s, -1), layer["self_attention.linear_proj.weight"])


def mlp(x: Tensor, layer: dict[str, Tensor]) -> Tensor:
    """SwiGLU with fc1 = [gate; up]: ``x [..., hidden]`` -> same shape."""
    gate, up = F.linear(x, layer["mlp.linear_fc1.weight"]).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, layer["mlp.linear_fc2.weight"])


@torch.no_grad()
def megatron_logits(spec: ModelSpec, top: dict[str, Tensor], layers: Iterable[dict[str, Tensor]],
                    input_ids: Tensor) -> Tensor:
    """fp32 logits ``[batch, seq, vocab]`` of a Megatron-layout model. ``top`` holds
    ``embedding.word_embeddings.weight``, ``decoder.final_layernorm.weight`` and (untied) ``output_layer.weight``;
    ``layers`` yields each layer's tensors with TE/checkpoint names relative to ``decoder.layers.{i}.``."""
    f32 = {k: v.float() for k, v in top.items()}
    emb = f32["embedding.word_embeddings.weight"]
    x = F.embedding(input_ids, emb)
    cos, sin = rope_cos_sin(spec, input_ids.shape[1])
    for raw in layers:
        layer = {k: v.float() for k, v in raw.items()}
        x = x + attention(spec, _rms(x, layer["self_attention.linear_qkv.layer_norm_weight"], spec.norm_eps),
                          layer, cos, sin)
        x = x + mlp(_rms(x, layer["mlp.linear_fc1.layer_norm_weight"], spec.norm_eps), layer)
    x = _rms(x, f32["decoder.final_layernorm.weight"], spec.norm_eps)
    return F.linear(x, emb if spec.tie_embeddings else f32["output_layer.weight"])
