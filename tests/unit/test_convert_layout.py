"""HF <-> Megatron weight layout (pure functions), RoPE in Megatron's terms, layer specs and registries."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from lcrecipes.commands import convert as convert_cmd
from lcrecipes.models import FAMILIES, get_family, hf_config_from_spec
from lcrecipes.models.megatron_rope import UnsupportedRopeError, rope_kwargs
from lcrecipes.models.megatron_weights import (
    LAYOUTS,
    fuse_qkv,
    hf_to_megatron,
    megatron_to_hf,
    rename_norms,
    split_qkv,
    stage_layers,
    tp_shard,
)

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


def test_fused_qkv_rows_are_grouped_per_kv_group() -> None:
    spec = get_family("llama").tiny_spec(num_heads=4, num_kv_heads=2, head_dim=1)
    q, k, v = torch.tensor([0.0, 1, 2, 3]), torch.tensor([10.0, 11]), torch.tensor([20.0, 21])
    assert fuse_qkv(spec, q, k, v).tolist() == [0, 1, 10, 20, 2, 3, 11, 21]  # [q0 q1 k0 v0 | q2 q3 k1 v1]


@pytest.mark.parametrize("kv", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_split_inverts_fuse_for_weights_and_biases(kv: int) -> None:
    spec = get_family("llama").tiny_spec(num_kv_heads=kv)
    for rest in [(spec.hidden_size,), ()]:
        q, k, v = (torch.randn(n, *rest) for n in (spec.q_size, spec.kv_size, spec.kv_size))
        fused = fuse_qkv(spec, q, k, v)
        assert fused.shape == (spec.q_size + 2 * spec.kv_size, *rest)
        assert all(torch.equal(a, b) for a, b in zip(split_qkv(spec, fused), (q, k, v)))


@pytest.mark.parametrize("family,overrides", [("llama", {}), ("llama", {"tie_embeddings": True}), ("qwen2", {})])
@pytest.mark.parametrize("names", ["local", "te"])
def test_state_dict_round_trip(family: str, overrides: dict, names: str) -> None:
    spec = get_family(family).tiny_spec(**overrides)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(hf_config_from_spec(spec)).state_dict()
    mg = hf_to_megatron(spec, hf, names=names)
    assert ("decoder.layers.0.input_layernorm.weight" in mg) == (names == "local")
    assert ("decoder.layers.1.mlp.linear_fc1.layer_norm_weight" in mg) == (names == "te")
    assert ("output_layer.weight" in mg) != spec.tie_embeddings
    assert ("decoder.layers.0.self_attention.linear_qkv.bias" in mg) == spec.qkv_bias
    gate, up = mg["decoder.layers.1.mlp.linear_fc1.weight"].chunk(2)
    assert torch.equal(gate, hf["model.layers.1.mlp.gate_proj.weight"])
    assert torch.equal(up, hf["model.layers.1.mlp.up_proj.weight"])
    back = megatron_to_hf(spec, mg)
    want = {k: v for k, v in hf.items() if not (spec.tie_embeddings and k == "lm_head.weight")}
    assert back.keys() == want.keys() and all(torch.equal(back[k], want[k]) for k in want)


def test_norm_names_of_both_specs() -> None:
    layer = {"input_layernorm.weight": 1, "pre_mlp_layernorm.weight": 2, "mlp.linear_fc2.weight": 3}
    te = rename_norms(layer, "te")
    assert te == {"self_attention.linear_qkv.layer_norm_weight": 1, "mlp.linear_fc1.layer_norm_weight": 2,
                  "mlp.linear_fc2.weight": 3}
    assert rename_norms(te, "local") == layer


def test_tp_shards_reassemble_the_full_tensor() -> None:
    full = torch.arange(24.0).reshape(8, 3)
    assert torch.equal(torch.cat([tp_shard("x.linear_qkv.weight", full, r, 2) for r in range(2)]), full)
    assert torch.equal(torch.cat([tp_shard("x.linear_fc2.weight", full.T, r, 2) for r in range(2)], 1), full.T)
    fc1 = [tp_shard("x.linear_fc1.weight", full, r, 2) for r in range(2)]  # [gate_r; up_r] per rank
    assert torch.equal(fc1[0], full[[0, 1, 4, 5]]) and torch.equal(fc1[1], full[[2, 3, 6, 7]])
    assert torch.equal(tp_shard("decoder.final_layernorm.weight", full, 1, 2), full)


def test_pipeline_stages_split_layers_evenly() -> None:
    spec = get_family("llama").tiny_spec(num_layers=4)
    assert [list(stage_layers(spec, r, 2)) for r in range(2)] == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="evenly"):
        stage_layers(spec, 0, 3)


def test_registries_are_complete() -> None:
    from lcrecipes.checkpoint.convert import READERS, WRITERS

    assert set(LAYOUTS) == set(FAMILIES)
    assert {k: v.family for k, v in LAYOUTS.items()} == {k: k for k in LAYOUTS}
    assert tuple(sorted(READERS)) == convert_cmd.SOURCES and tuple(sorted(WRITERS)) == convert_cmd.DESTINATIONS


def test_megatron_rope_matches_transformers() -> None:
    from lcrecipes.checkpoint.convert.reference import rope_cos_sin, rope_inv_freq

    for scaling in (None, LLAMA3, {"rope_type": "linear", "factor": 4.0}):
        spec = get_family("llama").tiny_spec(rope_theta=5e5, rope_scaling=scaling, max_position_embeddings=16384)
        rotary = AutoModelForCausalLM.from_config(hf_config_from_spec(spec)).model.rotary_emb
        cos, sin = rotary(torch.zeros(1), torch.arange(64)[None])
        mine_cos, mine_sin = rope_cos_sin(spec, 64)
        torch.testing.assert_close(mine_cos, cos[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(mine_sin, sin[0], atol=1e-6, rtol=0)
        if scaling is LLAMA3:
            torch.testing.assert_close(rope_inv_freq(spec), rotary.inv_freq, atol=0, rtol=1e-6)
            assert rope_kwargs(spec)["rope_scaling"] and rope_kwargs(spec)["rope_scaling_factor"] == 8.0


@pytest.mark.parametrize("scaling", [{"rope_type": "yarn", "factor": 4.0}, {**LLAMA3, "low_freq_factor": 2.0}])
def test_rope_megatron_cannot_run_is_refused(scaling: dict) -> None:
    with pytest.raises(UnsupportedRopeError, match="rope"):
        rope_kwargs(get_family("llama").tiny_spec(rope_scaling=scaling))


def test_transformer_config_and_layer_specs() -> None:
    from lcrecipes.models.megatron import layer_spec, resolve_layer_spec_kind, transformer_config

    cfg = transformer_config(get_family("qwen2").tiny_spec(num_kv_heads=1, head_dim=32), dtype=torch.bfloat16)
    assert (cfg.num_query_groups, cfg.kv_channels, cfg.add_qkv_bias, cfg.gated_linear_unit) == (1, 32, True, True)
    assert cfg.normalization == "RMSNorm" and not cfg.add_bias_linear and cfg.bf16
    assert resolve_layer_spec_kind("auto") == "local"  # no Transformer Engine on this machine

    class MyAttention(torch.nn.Module):
        pass

    spec = layer_spec("local", core_attention=MyAttention)
    assert spec.submodules.self_attention.submodules.core_attention is MyAttention
    with pytest.raises(RuntimeError, match="Transformer Engine"):
        layer_spec("te")
    with pytest.raises(ValueError, match="unknown kind"):
        layer_spec("flash")
