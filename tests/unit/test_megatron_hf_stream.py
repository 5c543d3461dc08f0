"""Streaming a HF checkpoint into one Megatron (TP rank, PP stage): ``hf_dir_to_megatron`` reads only the rank's
slices of the safetensors files and gives exactly ``hf_to_megatron`` of the full state dict (``torch.equal``), for
GQA, MHA, MQA (fewer KV groups than TP ranks), qkv bias and tied embeddings, at TP 1/2/4 x PP 1/2, from a single
file and from a sharded checkpoint with an index. The bytes each rank reads add up to the checkpoint once, plus the
replicated norms once per extra TP rank: the full model is never read on one rank (nor built: no transformers).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lcrecipes.models import get_family, hf_config_from_spec
from lcrecipes.models.megatron_weights import hf_to_megatron, stage_layers
from lcrecipes.models.megatron_weights_stream import SafetensorsDir, hf_dir_to_megatron

VARIANTS = {  # name -> (family, spec overrides)
    "gqa": ("llama", {}),
    "mha": ("llama", {"num_kv_heads": 4}),
    "mqa": ("llama", {"num_kv_heads": 1}),
    "qwen2_tied": ("qwen2", {"tie_embeddings": True}),
}
LAYOUTS = [(1, 1), (2, 1), (4, 1), (1, 2), (2, 2)]  # (tp, pp)


def _save(root: Path, name: str, shard_bytes: str | None = None) -> tuple:
    from transformers import AutoModelForCausalLM

    family, overrides = VARIANTS[name]
    spec = get_family(family).tiny_spec(**overrides)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config_from_spec(spec))
    path = root / f"{name}-{shard_bytes or 'single'}"
    model.save_pretrained(path, **({"max_shard_size": shard_bytes} if shard_bytes else {}))
    return spec, model.state_dict(), path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hf_stream")
    out = {name: _save(root, name) for name in VARIANTS}
    out["gqa_sharded"] = _save(root, "gqa", shard_bytes="200KB")
    return out


def _rank_dicts(spec, hf, path, tp, pp):
    """(streamed, reference, bytes read) for every (TP rank, PP stage)."""
    for pp_rank in range(pp):
        where = dict(layers=stage_layers(spec, pp_rank, pp), pre_process=pp_rank == 0, post_process=pp_rank == pp - 1)
        for tp_rank in range(tp):
            with SafetensorsDir(path) as files:
                got = hf_dir_to_megatron(spec, files, tp_rank=tp_rank, tp_size=tp, names="te", **where)
            yield got, hf_to_megatron(spec, hf, tp_rank=tp_rank, tp_size=tp, names="te", **where), files.bytes_read


@pytest.mark.parametrize("layout", LAYOUTS, ids=[f"tp{t}pp{p}" for t, p in LAYOUTS])
@pytest.mark.parametrize("name", [*VARIANTS, "gqa_sharded"])
def test_streamed_slices_equal_the_full_state_dict_mapping(checkpoints, name, layout) -> None:
    spec, hf, path = checkpoints[name]
    tp, pp = layout
    total = 0
    for got, want, nbytes in _rank_dicts(spec, hf, path, tp, pp):
        assert sorted(got) == sorted(want)
        for k in want:
            assert torch.equal(got[k], want[k]), (name, layout, k)
        assert nbytes == sum(t.numel() * t.element_size() for t in got.values())
        total += nbytes
    file_bytes = sum(t.numel() * t.element_size() for k, t in hf.items() if k != "lm_head.weight" or
                     not spec.tie_embeddings)
    norms = (2 * spec.num_layers + 1) * spec.hidden_size * 4  # replicated over TP ranks (fp32)
    tied_head = spec.vocab_size * spec.hidden_size * 4 if spec.tie_embeddings and pp > 1 else 0  # last stage
    assert total == file_bytes + (tp - 1) * norms + tied_head, (total, file_bytes)


def test_a_tp2_rank_reads_about_half_of_the_checkpoint(checkpoints) -> None:
    spec, hf, path = checkpoints["gqa"]
    file_bytes = sum(t.numel() * t.element_size() for t in hf.values())
    for _, _, nbytes in _rank_dicts(spec, hf, path, 2, 1):
        assert 0.5 * file_bytes < nbytes < 0.52 * file_bytes, (nbytes, file_bytes)


def test_missing_checkpoint_files_give_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        SafetensorsDir(tmp_path)
