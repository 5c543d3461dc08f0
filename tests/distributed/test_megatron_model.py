"""Megatron-Core GPTModel built from our spec and loaded with HF weights gives transformers' logits, at TP=1 and
TP=2 (2 gloo ranks, CUDA placement redirected to CPU by the ``tests.megatron_cpu`` fixture).

The same run checks that the verify reference forward (``convert.reference``) equals the real GPTModel and that a
custom ``core_attention`` plugged into the layer spec is the one that runs. Tolerance: 1e-5 absolute on logits
(fp32; two implementations differ only in op order, measured ~2e-7).
"""

from __future__ import annotations

import pytest
import torch

from tests.megatron_cpu import megatron_on_cpu, run_ranks

pytestmark = pytest.mark.distributed

TOL = 1e-5
VARIANTS = [  # (family, spec overrides)
    ("llama", {}),  # GQA 4 heads / 2 KV heads
    ("llama", {"num_kv_heads": 4}),  # MHA
    ("llama", {"num_kv_heads": 1}),  # MQA: at TP=2 fewer KV groups than TP ranks
    ("llama", {"tie_embeddings": True, "rope_theta": 5e5, "max_position_embeddings": 16384,
               "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}),
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    ("qwen2", {}),  # qkv bias
    ("qwen2", {"tie_embeddings": True, "num_kv_heads": 1}),
]


def _check_variants(rank: int, world_size: int, tp: int) -> list[dict]:
    from megatron.core import parallel_state as ps
    from transformers import AutoModelForCausalLM

    from lcrecipes.checkpoint.convert.reference import megatron_logits
    from lcrecipes.models import get_family, hf_config_from_spec
    from lcrecipes.models.megatron import build_gpt_model
    from lcrecipes.models.megatron_weights import hf_to_megatron

    out = []
    with megatron_on_cpu(tp=tp):
        for family, overrides in VARIANTS:
            spec = get_family(family).tiny_spec(**overrides)
            torch.manual_seed(0)
            hf = AutoModelForCausalLM.from_config(hf_config_from_spec(spec)).eval()
            ids = torch.randint(0, spec.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                ref = hf(ids).logits
            model = build_gpt_model(spec, parallel_output=False, perform_initialization=False).eval()
            sd = hf_to_megatron(spec, hf.state_dict(), tp_rank=ps.get_tensor_model_parallel_rank(), tp_size=tp)
            missing, unexpected = model.load_state_dict(sd, strict=False)
            assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)
            with torch.no_grad():
                got = model(ids, torch.arange(24).expand(2, -1), None)
            full = hf_to_megatron(spec, hf.state_dict(), names="te")
            layers = [{k.split(".", 3)[3]: v for k, v in full.items() if k.startswith(f"decoder.layers.{i}.")}
                      for i in range(spec.num_layers)]
            top = {k: v for k, v in full.items() if not k.startswith("decoder.layers.")}
            mine = megatron_logits(spec, top, layers, ids)
            out.append({"variant": (family, overrides), "tp": tp, "megatron_vs_hf": float((got - ref).abs().max()),
                        "reference_vs_megatron": float((mine - got).abs().max())})
    return out


def _custom_core_attention(rank: int, world_size: int) -> int:
    """A core_attention class plugged into the layer spec runs in every layer."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from lcrecipes.models import get_family
    from lcrecipes.models.megatron import build_gpt_model

    calls = []

    class Counting(DotProductAttention):
        def forward(self, *args, **kwargs):
            calls.append(1)
            return super().forward(*args, **kwargs)

    spec = get_family("llama").tiny_spec()
    with megatron_on_cpu(tp=2):
        model = build_gpt_model(spec, core_attention=Counting, perform_initialization=False).eval()
        with torch.no_grad():
            model(torch.zeros(1, 8, dtype=torch.long), torch.arange(8)[None], None)
    return len(calls)


def _worker(rank: int, world_size: int) -> dict:
    return {"checks": _check_variants(rank, world_size, 1) + _check_variants(rank, world_size, 2),
            "core_attention_calls": _custom_core_attention(rank, world_size)}


def test_hf_initialised_gpt_model_matches_transformers_at_tp1_and_tp2() -> None:
    results = run_ranks(_worker, 2)
    for res in results:
        assert res["core_attention_calls"] == 2  # one per layer
        assert len(res["checks"]) == 2 * len(VARIANTS)
        for c in res["checks"]:
            assert c["megatron_vs_hf"] <= TOL, c
            assert c["reference_vs_megatron"] <= TOL, c
