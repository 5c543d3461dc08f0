"""HF <-> Megatron-Core weight layout, per family: pure functions on dicts of tensors.

Megatron layout (per layer, names relative to ``decoder.layers.{j}.``):
  ``self_attention.linear_qkv.weight``  ``[(h + 2g) * d, hidden]``, rows grouped per KV group
                                        ``[q_0 … q_{h/g-1}, k, v] × g`` (``.bias`` likewise, qkv-bias models only)
  ``self_attention.linear_proj.weight`` ``[hidden, h * d]``  (HF ``o_proj``)
  ``mlp.linear_fc1.weight``             ``[2 * ffn, hidden]`` = ``cat([gate, up])``
  ``mlp.linear_fc2.weight``             ``[hidden, ffn]``  (HF ``down_proj``)
  norms: local spec ``input_layernorm.weight`` / ``pre_mlp_layernorm.weight``; Transformer Engine spec (and every
  ``dist_checkpointing`` checkpoint) ``self_attention.linear_qkv.layer_norm_weight`` /
  ``mlp.linear_fc1.layer_norm_weight``.
Top level: ``embedding.word_embeddings.weight`` ``[vocab, hidden]``, ``decoder.final_layernorm.weight``,
``output_layer.weight`` (absent when embeddings are tied). h = heads, g = KV heads, d = head_dim.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from lcrecipes.models.spec import ModelSpec

HF_LAYER = "model.layers.{i}."
MG_LAYER = "decoder.layers.{i}."
HF_EMBED, HF_NORM, HF_HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"
MG_EMBED, MG_NORM, MG_HEAD = "embedding.word_embeddings.weight", "decoder.final_layernorm.weight", "output_layer.weight"
# Norm names: local spec -> Transformer Engine spec / dist_checkpointing names.
LOCAL_TO_TE_NORMS = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}
TE_TO_LOCAL_NORMS = {v: k for k, v in LOCAL_TO_TE_NORMS.items()}
NORM_NAMES = ("local", "te")


def fuse_qkv(spec: ModelSpec, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``q [h*d, ...]``, ``k``/``v`` ``[g*d, ...]`` -> ``[(h+2g)*d, ...]`` grouped per KV group (weights or biases)."""
    g, d = spec.num_kv_heads, spec.head_dim
    rest = q.shape[1:]
    parts = (q.reshape(g, -1, *rest), k.reshape(g, d, *rest), v.reshape(g, d, *rest))
    return torch.cat(parts, dim=1).reshape(-1, *rest)


# How the HF parts of a Megatron tensor are joined, by its name's last two components (default: one part as is).
COMBINE = {"linear_qkv.weight": "qkv", "linear_qkv.bias": "qkv", "linear_fc1.weight": "glu"}


def tensor_kind(name: str) -> str:
    return ".".join(name.split(".")[-2:])


def combine(spec: ModelSpec, name: str, parts: list[Tensor]) -> Tensor:
    """The full Megatron tensor ``name`` from its HF parts: q, k, v fused per KV group; fc1 = [gate; up]."""
    how = COMBINE.get(tensor_kind(name))
    if how == "qkv":
        return fuse_qkv(spec, *parts)
    if how == "glu":
        return torch.cat(parts)
    (part,) = parts
    return part


def split_qkv(spec: ModelSpec, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of ``fuse_qkv``: ``[(h+2g)*d, ...]`` -> ``(q [h*d, ...], k [g*d, ...], v [g*d, ...])``."""
    g, d = spec.num_kv_heads, spec.head_dim
    rest = qkv.shape[1:]
    q, k, v = qkv.reshape(g, -1, *rest).split([spec.num_heads // g * d, d, d], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Shapes of one layer's Megatron tensors (TE norm names) and of the top-level tensors, for validation."""
    hid, q_out = spec.hidden_size, spec.q_size + 2 * spec.kv_size
    out = {
        "self_attention.linear_qkv.weight": (q_out, hid),
        "self_attention.linear_proj.weight": (hid, spec.q_size),
        "mlp.linear_fc1.weight": (2 * spec.ffn_hidden_size, hid),
        "mlp.linear_fc2.weight": (hid, spec.ffn_hidden_size),
        "self_attention.linear_qkv.layer_norm_weight": (hid,),
        "mlp.linear_fc1.layer_norm_weight": (hid,),
        MG_EMBED: (spec.vocab_size, hid), MG_NORM: (hid,),
    }
    if spec.qkv_bias:
        out["self_attention.linear_qkv.bias"] = (q_out,)
    if not spec.tie_embeddings:
        out[MG_HEAD] = (spec.vocab_size, hid)
    return out


class MegatronLayout:
    """One family's HF <-> Megatron mapping. Llama and qwen2 share HF names; subclasses narrow the rules."""

    family: ClassVar[str]

    def check(self, spec: ModelSpec) -> None:
        """Raise ``ValueError`` when ``spec`` cannot be laid out for Megatron by this family."""

    def layer_sources(self, spec: ModelSpec) -> dict[str, tuple[str, ...]]:
        """One layer's Megatron names (local norm names, relative to ``decoder.layers.{i}.``) -> the HF tensors
        (relative to ``model.layers.{i}.``) each is made of, in order (see :func:`combine`)."""
        a, m = "self_attn.", "mlp."
        out = {
            "input_layernorm.weight": ("input_layernorm.weight",),
            "self_attention.linear_qkv.weight": (a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"),
            "self_attention.linear_proj.weight": (a + "o_proj.weight",),
            "pre_mlp_layernorm.weight": ("post_attention_layernorm.weight",),
            "mlp.linear_fc1.weight": (m + "gate_proj.weight", m + "up_proj.weight"),
            "mlp.linear_fc2.weight": (m + "down_proj.weight",),
        }
        if spec.qkv_bias:
            out["self_attention.linear_qkv.bias"] = (a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias")
        return out

    def layer_to_megatron(self, spec: ModelSpec, hf: dict[str, Tensor], names: str = "local") -> dict[str, Tensor]:
        """One layer, HF names relative to ``model.layers.{i}.`` -> Megatron names relative to
        ``decoder.layers.{i}.`` (full, unsharded tensors; ``names`` picks the norm names)."""
        out = {mg: combine(spec, mg, [hf[s] for s in srcs]) for mg, srcs in self.layer_sources(spec).items()}
        return rename_norms(out, names)

    def layer_to_hf(self, spec: ModelSpec, mg: dict[str, Tensor]) -> dict[str, Tensor]:
        """Inverse of ``layer_to_megatron``; accepts local or Transformer Engine norm names."""
        mg = rename_norms(mg, "local")
        q, k, v = split_qkv(spec, mg["self_attention.linear_qkv.weight"])
        gate, up = mg["mlp.linear_fc1.weight"].chunk(2)
        out = {
            "input_layernorm.weight": mg["input_layernorm.weight"],
            "self_attn.q_proj.weight": q, "self_attn.k_proj.weight": k, "self_attn.v_proj.weight": v,
            "self_attn.o_proj.weight": mg["self_attention.linear_proj.weight"],
            "post_attention_layernorm.weight": mg["pre_mlp_layernorm.weight"],
            "mlp.gate_proj.weight": gate, "mlp.up_proj.weight": up,
            "mlp.down_proj.weight": mg["mlp.linear_fc2.weight"],
        }
        if spec.qkv_bias:
            qb, kb, vb = split_qkv(spec, mg["self_attention.linear_qkv.bias"])
            out.update({"self_attn.q_proj.bias": qb, "self_attn.k_proj.bias": kb, "self_attn.v_proj.bias": vb})
        return out

    def top_to_megatron(self, spec: ModelSpec, hf: dict[str, Tensor]) -> dict[str, Tensor]:
        """Embedding, final norm and (untied) output layer; absent HF keys are skipped (pipeline stages)."""
        pairs = [(HF_EMBED, MG_EMBED), (HF_NORM, MG_NORM)] + ([] if spec.tie_embeddings else [(HF_HEAD, MG_HEAD)])
        return {mg: hf[name] for name, mg in pairs if name in hf}

    def top_to_hf(self, spec: ModelSpec, mg: dict[str, Tensor]) -> dict[str, Tensor]:
        pairs = [(MG_EMBED, HF_EMBED), (MG_NORM, HF_NORM)] + ([] if spec.tie_embeddings else [(MG_HEAD, HF_HEAD)])
        return {hf: mg[name] for name, hf in pairs if name in mg}


class LlamaLayout(MegatronLayout):
    family = "llama"


class Qwen2Layout(MegatronLayout):
    family = "qwen2"

    def check(self, spec: ModelSpec) -> None:
        if not spec.qkv_bias:
            raise ValueError("qwen2: the model must have a qkv bias (Qwen2Attention always has one)")


LAYOUTS: dict[str, type[MegatronLayout]] = {c.family: c for c in (LlamaLayout, Qwen2Layout)}


def get_layout(family: str) -> MegatronLayout:
    if family not in LAYOUTS:
        raise KeyError(f"no HF <-> Megatron layout for model family {family!r}; known: {', '.join(sorted(LAYOUTS))}")
    return LAYOUTS[family]()


def rename_norms(layer: dict[str, Tensor], names: str) -> dict[str, Tensor]:
    """Rename one layer's norm keys to the ``local`` or ``te`` spec's names (other keys unchanged)."""
    if names not in NORM_NAMES:
        raise ValueError(f"norm names must be one of {NORM_NAMES}, got {names!r}")
    table = LOCAL_TO_TE_NORMS if names == "te" else TE_TO_LOCAL_NORMS
    return {table.get(k, k): v for k, v in layer.items()}


# ---- tensor parallel sharding (hf -> megatron for a model on a TP rank) ----

# last two name components -> how the tensor is split over TP ranks: dim 0 (column parallel), 1 (row parallel),
# "glu" (fc1: gate and up split separately), None (replicated).
TP_SPLIT: dict[str, int | str | None] = {
    "linear_qkv.weight": 0, "linear_qkv.bias": 0, "word_embeddings.weight": 0, "output_layer.weight": 0,
    "linear_proj.weight": 1, "linear_fc2.weight": 1, "linear_fc1.weight": "glu",
    "linear_qkv.layer_norm_weight": None, "linear_fc1.layer_norm_weight": None, "input_layernorm.weight": None,
    "pre_mlp_layernorm.weight": None, "final_layernorm.weight": None,
}


def tp_shard(name: str, t: Tensor, tp_rank: int, tp_size: int) -> Tensor:
    """This TP rank's slice of the full Megatron tensor ``name`` (a clone, so the result owns its memory)."""
    rule = TP_SPLIT[tensor_kind(name)]
    if rule is None or tp_size == 1:
        return t.clone()
    if rule == "glu":
        gate, up = t.chunk(2)
        return torch.cat([gate.chunk(tp_size)[tp_rank], up.chunk(tp_size)[tp_rank]])
    if t.shape[rule] % tp_size:
        raise ValueError(f"{name}: dim {rule} of size {t.shape[rule]} does not split over tp={tp_size}")
    return t.chunk(tp_size, dim=rule)[tp_rank].clone()


def stage_layers(spec: ModelSpec, pp_rank: int = 0, pp_size: int = 1) -> range:
    """Global layer indices held by pipeline stage ``pp_rank`` (Megatron's even split)."""
    if spec.num_layers % pp_size:
        raise ValueError(f"num_layers={spec.num_layers} does not split evenly over pp={pp_size}")
    per = spec.num_layers // pp_size
    return range(pp_rank * per, (pp_rank + 1) * per)


def megatron_plan(spec: ModelSpec, *, names: str = "local", layers: range | None = None, pre_process: bool = True,
                  post_process: bool = True) -> dict[str, tuple[str, ...]]:
    """Megatron name -> the HF tensors it is made of, for one pipeline stage of ``GPTModel``.

    ``layers`` are the stage's global layer indices (default all); they become local ``decoder.layers.{j}``.
    A last stage without the embedding gets ``output_layer.weight`` = the embedding when embeddings are tied."""
    layout = get_layout(spec.family)
    layout.check(spec)
    out: dict[str, tuple[str, ...]] = {}
    for j, i in enumerate(layers if layers is not None else range(spec.num_layers)):
        for rel, srcs in rename_norms(layout.layer_sources(spec), names).items():
            out[MG_LAYER.format(i=j) + rel] = tuple(HF_LAYER.format(i=i) + s for s in srcs)
    if pre_process:
        out[MG_EMBED] = (HF_EMBED,)
    if post_process:
        out[MG_NORM] = (HF_NORM,)
        if not spec.tie_embeddings:
            out[MG_HEAD] = (HF_HEAD,)
        elif not pre_process:
            out[MG_HEAD] = (HF_EMBED,)
    return out


def hf_to_megatron(spec: ModelSpec, hf: dict[str, Tensor], *, names: str = "local", tp_rank: int = 0,
                   tp_size: int = 1, layers: range | None = None, pre_process: bool = True,
                   post_process: bool = True) -> dict[str, Tensor]:
    """A HF state dict -> the Megatron state dict of one (TP rank, PP stage) of ``GPTModel`` (see
    :func:`megatron_plan`; :func:`megatron_weights_stream.hf_dir_to_megatron` reads the same from files)."""
    plan = megatron_plan(spec, names=names, layers=layers, pre_process=pre_process, post_process=post_process)
    return {mg: tp_shard(mg, combine(spec, mg, [hf[s] for s in srcs]), tp_rank, tp_size)
            for mg, srcs in plan.items()}


def megatron_to_hf(spec: ModelSpec, mg: dict[str, Tensor]) -> dict[str, Tensor]:
    """A full (TP-merged, all layers) Megatron state dict, local or TE names -> the HF state dict.
    ``lm_head.weight`` is omitted when embeddings are tied (as in HF checkpoints)."""
    layout = get_layout(spec.family)
    layout.check(spec)
    out = layout.top_to_hf(spec, mg)
    for i in range(spec.num_layers):
        prefix = MG_LAYER.format(i=i)
        rel = {k[len(prefix):]: v for k, v in mg.items() if k.startswith(prefix) and not k.endswith("_extra_state")}
        out.update({HF_LAYER.format(i=i) + k: v for k, v in layout.layer_to_hf(spec, rel).items()})
    return out
