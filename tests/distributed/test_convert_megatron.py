"""Megatron checkpoints written by real GPTModels over 2 gloo ranks (TP=2 and PP=2, saved with
``dist_checkpointing.save``) convert to exactly the HF weights they were built from; checkpoints written by
``lcr convert --to megatron`` load into GPTModels at TP=2 and PP=2 (``models.megatron.load_checkpoint``) with
exactly the expected per-rank tensors, and at TP=2 give transformers' logits (fp32, 1e-5).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lcrecipes.checkpoint.convert import convert
from lcrecipes.models import get_family, hf_config_from_spec
from tests.megatron_cpu import megatron_on_cpu, run_ranks

pytestmark = pytest.mark.distributed

SPECS = {  # name -> (family, overrides)
    "qwen2_gqa_bias": ("qwen2", {}),
    "llama_tied_mqa": ("llama", {"tie_embeddings": True, "num_kv_heads": 1, "rope_theta": 5e5}),
}
LAYOUTS = {"tp2": (2, 1), "pp2": (1, 2)}


def _spec(name: str):
    family, overrides = SPECS[name]
    return get_family(family).tiny_spec(**overrides)


def _hf_model(name: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(hf_config_from_spec(_spec(name))).eval()


def _stage_model(spec, hf, tp: int, pp: int):
    """This rank's GPTModel slice and the Megatron state dict it should hold."""
    from megatron.core import parallel_state as ps

    from lcrecipes.models.megatron import build_gpt_model
    from lcrecipes.models.megatron_weights import hf_to_megatron, stage_layers

    model = build_gpt_model(spec, parallel_output=False, perform_initialization=False).eval()
    want = hf_to_megatron(spec, hf.state_dict(), tp_rank=ps.get_tensor_model_parallel_rank(), tp_size=tp,
                          layers=stage_layers(spec, ps.get_pipeline_model_parallel_rank(), pp),
                          pre_process=model.pre_process, post_process=model.post_process)
    return model, want


def _save_and_load(rank: int, world_size: int, root: str) -> dict:
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    from lcrecipes.checkpoint.convert.base import write_spec
    from lcrecipes.models.megatron import load_checkpoint

    out: dict = {}
    for name in SPECS:
        spec, hf = _spec(name), _hf_model(name)
        ids = torch.randint(0, spec.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))
        for layout, (tp, pp) in LAYOUTS.items():
            with megatron_on_cpu(tp=tp, pp=pp):
                model, want = _stage_model(spec, hf, tp, pp)
                model.load_state_dict(want, strict=False)
                saved = Path(root) / f"{name}_{layout}"
                if rank == 0:
                    saved.mkdir()
                    write_spec(spec, saved)
                dist.barrier()
                dist_checkpointing.save(model.sharded_state_dict(), str(saved))
                # the converted checkpoint loads into a fresh model with exactly this rank's tensors
                fresh, _ = _stage_model(spec, hf, tp, pp)
                load_checkpoint(fresh, Path(root) / f"{name}_converted")
                got = {k: v for k, v in fresh.state_dict().items() if not k.endswith("_extra_state")}
                assert got.keys() == want.keys(), sorted(set(got) ^ set(want))
                out[(name, layout, "load_equal")] = all(torch.equal(got[k], want[k]) for k in want)
                if pp == 1:
                    with torch.no_grad():
                        logits = fresh(ids, torch.arange(16).expand(2, -1), None)
                        out[(name, layout, "logit_diff")] = float((logits - hf(ids).logits).abs().max())
    return out


def _hf_weights(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_megatron_checkpoints_at_tp2_and_pp2_convert_to_the_same_hf_weights(tmp_path: Path) -> None:
    for name in SPECS:
        _hf_model(name).save_pretrained(tmp_path / f"{name}_hf")
        convert("hf", "megatron", tmp_path / f"{name}_hf", tmp_path / f"{name}_converted")
    results = run_ranks(_save_and_load, 2, str(tmp_path))
    for res in results:
        for key, value in res.items():
            assert value is True if key[2] == "load_equal" else value <= 1e-5, (key, value)
    for name in SPECS:
        original = _hf_weights(tmp_path / f"{name}_hf")
        for layout in LAYOUTS:
            dst = tmp_path / f"{name}_{layout}_hf"
            convert("megatron", "hf", tmp_path / f"{name}_{layout}", dst, verify=True)
            back = _hf_weights(dst)
            assert back.keys() == original.keys() - ({"lm_head.weight"} if "tied" in name else set())
            assert all(torch.equal(back[k], original[k]) for k in back), (name, layout)
