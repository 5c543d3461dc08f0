"""Conversions on tiny random models (single process): bitwise fp32 round trips, ``--verify`` tolerances and
negative controls, clear errors for bad input, and no partial output directory ever."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lcrecipes.checkpoint.convert import ConvertError, VerifyError, convert
from lcrecipes.models import get_family, hf_config_from_spec
from lcrecipes.models.megatron_weights import LAYOUTS, LlamaLayout, fuse_qkv

VARIANTS = {
    "llama_mha": ("llama", {"num_kv_heads": 4}),
    "llama_gqa": ("llama", {}),
    "llama_mqa_tied": ("llama", {"num_kv_heads": 1, "tie_embeddings": True}),
    "llama3_rope": ("llama", {"rope_theta": 5e5, "max_position_embeddings": 16384, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}}),
    "llama_linear_rope": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    "qwen2_bias": ("qwen2", {}),
    "qwen2_bias_tied": ("qwen2", {"tie_embeddings": True, "rope_theta": 1e6}),
}


def save_hf(path: Path, family: str = "llama", **overrides) -> Path:
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(hf_config_from_spec(get_family(family).tiny_spec(**overrides))).save_pretrained(path)
    return path


def weights(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_hf_megatron_hf_round_trip_is_bitwise(name: str, tmp_path: Path) -> None:
    family, overrides = VARIANTS[name]
    src = save_hf(tmp_path / "hf", family, **overrides)
    r1 = convert("hf", "megatron", src, tmp_path / "mg", verify=True)
    r2 = convert("megatron", "hf", tmp_path / "mg", tmp_path / "back", verify=True, max_shard_bytes=60_000)
    assert r1.verify.max_abs_diff <= 1e-6 and r2.verify.max_abs_diff <= 1e-6
    a, b = weights(src), weights(tmp_path / "back")
    assert b.keys() == a.keys() - ({"lm_head.weight"} if overrides.get("tie_embeddings") else set())
    assert all(torch.equal(a[k], b[k]) for k in b)
    index = json.loads((tmp_path / "back" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and sorted(index["weight_map"]) == sorted(b)
    cfg_a, cfg_b = (json.loads((d / "config.json").read_text()) for d in (src, tmp_path / "back"))
    for key in ("rope_parameters", "tie_word_embeddings", "num_key_value_heads", "model_type", "architectures"):
        assert cfg_a[key] == cfg_b[key], key
    assert (tmp_path / "back" / "generation_config.json").is_file()
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "back").config.model_type == family


def test_bf16_output_is_within_the_stated_tolerance(tmp_path: Path) -> None:
    convert("hf", "megatron", save_hf(tmp_path / "hf", "qwen2"), tmp_path / "mg")
    res = convert("megatron", "hf", tmp_path / "mg", tmp_path / "bf16", dtype="bf16", verify=True)
    assert res.dtype == "bf16" and 0 < res.verify.max_abs_diff <= res.verify.tolerance
    assert {t.dtype for t in weights(tmp_path / "bf16").values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


class WrongQkvSplit(LlamaLayout):
    """Negative control: q, k, v concatenated whole instead of grouped per KV group."""

    def layer_to_megatron(self, spec, hf, names="local"):
        out = super().layer_to_megatron(spec, hf, names)
        a = "self_attn."
        out["self_attention.linear_qkv.weight"] = torch.cat([hf[a + "q_proj.weight"], hf[a + "k_proj.weight"],
                                                             hf[a + "v_proj.weight"]])
        return out


class SwappedGateUp(LlamaLayout):
    """Negative control: fc1 = [up; gate]."""

    def layer_to_hf(self, spec, mg):
        out = super().layer_to_hf(spec, mg)
        out["mlp.gate_proj.weight"], out["mlp.up_proj.weight"] = out["mlp.up_proj.weight"], out["mlp.gate_proj.weight"]
        return out


def test_verify_detects_a_wrong_qkv_split_and_swapped_gate_up(tmp_path: Path, monkeypatch) -> None:
    src = save_hf(tmp_path / "hf")  # GQA: 4 heads, 2 KV heads
    convert("hf", "megatron", src, tmp_path / "mg")
    for broken, (fmt_from, fmt_to, source) in [(WrongQkvSplit, ("hf", "megatron", src)),
                                               (SwappedGateUp, ("megatron", "hf", tmp_path / "mg"))]:
        monkeypatch.setitem(LAYOUTS, "llama", broken)
        before = siblings(tmp_path / "x")
        with pytest.raises(VerifyError, match="FAILED"):
            convert(fmt_from, fmt_to, source, tmp_path / "x", verify=True)
        assert siblings(tmp_path / "x") == before  # no DST, no temporary directory left behind


@pytest.mark.parametrize("field,value,match", [("num_heads", 2, r"linear_qkv.weight has shape .*num_heads=2"),
                                               ("num_kv_heads", 1, "linear_qkv.weight"),
                                               ("vocab_size", 1000, "word_embeddings.weight"),
                                               ("tie_embeddings", True, "tie_embeddings")])
def test_megatron_config_that_does_not_match_the_weights(tmp_path: Path, field: str, value, match: str) -> None:
    convert("hf", "megatron", save_hf(tmp_path / "hf"), tmp_path / "mg")
    spec_file = tmp_path / "mg" / "model_spec.json"
    spec_file.write_text(json.dumps({**json.loads(spec_file.read_text()), field: value}))
    with pytest.raises(ConvertError, match=match):
        convert("megatron", "hf", tmp_path / "mg", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hf_config_that_does_not_match_the_weights(tmp_path: Path) -> None:
    src = save_hf(tmp_path / "hf")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "num_key_value_heads": 4}))
    with pytest.raises(ConvertError, match=r"k_proj.weight has shape \(32, 64\).*\(64, 64\).*num_kv_heads=4"):
        convert("hf", "megatron", src, tmp_path / "out")


def test_missing_shards_are_named(tmp_path: Path) -> None:
    src = save_hf(tmp_path / "hf")
    convert("hf", "hf", src, tmp_path / "sharded", max_shard_bytes=60_000)
    victim = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(ConvertError, match=f"{victim.name}: missing shard"):
        convert("hf", "megatron", tmp_path / "sharded", tmp_path / "out")
    convert("hf", "megatron", src, tmp_path / "mg")
    next((tmp_path / "mg").glob("*.distcp")).unlink()
    with pytest.raises(ConvertError, match=r"\.distcp: missing shard"):
        convert("megatron", "hf", tmp_path / "mg", tmp_path / "out")


def test_unknown_family_and_unsupported_rope_are_refused(tmp_path: Path) -> None:
    convert("hf", "megatron", save_hf(tmp_path / "hf"), tmp_path / "mg")
    spec_file = tmp_path / "mg" / "model_spec.json"
    spec_file.write_text(json.dumps({**json.loads(spec_file.read_text()), "family": "gpt2"}))
    with pytest.raises(ConvertError, match="unknown model family 'gpt2'"):
        convert("megatron", "hf", tmp_path / "mg", tmp_path / "out")
    cfg_file = tmp_path / "hf" / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "model_type": "gpt2"}))
    with pytest.raises(ConvertError, match="unknown model family 'gpt2'"):
        convert("hf", "megatron", tmp_path / "hf", tmp_path / "out")
    yarn = save_hf(tmp_path / "yarn", rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                    "original_max_position_embeddings": 1024})
    with pytest.raises(ConvertError, match="rope_type 'yarn' is not supported"):
        convert("hf", "megatron", yarn, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_dst_is_kept_unless_overwrite(tmp_path: Path) -> None:
    src = save_hf(tmp_path / "hf")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    with pytest.raises(FileExistsError):
        convert("hf", "megatron", src, tmp_path / "out")
    assert (tmp_path / "out" / "keep").is_file()
    convert("hf", "megatron", src, tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "keep").exists() and (tmp_path / "out" / "model_spec.json").is_file()


def test_tokenizer_and_generation_config_come_from_the_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    src = save_hf(tmp_path / "hf")
    convert("hf", "megatron", src, run / "checkpoints" / "step_1" / "model")
    (run / "tokenizer").mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (run / "tokenizer" / f).write_text("{}")
    out = tmp_path / "out"
    convert("megatron", "hf", run / "checkpoints" / "step_1" / "model", out)
    assert (out / "tokenizer.json").read_text() == "{}" and (out / "tokenizer_config.json").is_file()
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2


def test_fuse_is_what_the_negative_control_breaks() -> None:
    """The wrong split differs from the grouped layout whenever there is more than one KV group."""
    spec = get_family("llama").tiny_spec()
    q, k, v = torch.randn(64, 8), torch.randn(32, 8), torch.randn(32, 8)
    assert not torch.equal(fuse_qkv(spec, q, k, v), torch.cat([q, k, v]))


def test_megatron_reads_bypass_dcp_and_agree_with_it(tmp_path: Path) -> None:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load

    from lcrecipes.checkpoint.convert.torch_dist import TorchDistFiles, _RegionPlanner

    convert("hf", "megatron", save_hf(tmp_path / "hf", "qwen2"), tmp_path / "mg")
    files = TorchDistFiles(tmp_path / "mg")
    for key in files.tensors:
        shape = files.shape(key)
        fast = torch.empty((1, *shape[1:]), dtype=files.dtype(key))
        assert files._read_direct(key, fast, start=shape[0] - 1)  # the direct path, not the DCP fallback
        ref = torch.empty_like(fast)
        dcp_load({key: ref}, storage_reader=FileSystemReader(str(tmp_path / "mg")), no_dist=True,
                 planner=_RegionPlanner({key: (shape[0] - 1,) + (0,) * (len(shape) - 1)}))
        assert torch.equal(fast, ref), key


def test_safetensors_shards_are_written_in_any_order(tmp_path: Path) -> None:
    from lcrecipes.checkpoint.convert.safetensors_out import ShardedSafetensorsWriter

    tensors = {f"t{i}": torch.randn(i + 1, 3) for i in range(5)}
    out = ShardedSafetensorsWriter(tmp_path, {k: tuple(v.shape) for k, v in tensors.items()}, torch.float32, 40)
    for k in reversed(list(tensors)):
        out.put(k, tensors[k])
    out.close()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 4  # t0+t1 share a 40-byte shard; t2..t4 are larger
    got = weights(tmp_path)
    assert all(torch.equal(got[k], v) for k, v in tensors.items())


def test_megatron_to_hf_copies_file_pieces_that_hold_the_read_tensors(tmp_path: Path, monkeypatch) -> None:
    """A same-dtype Megatron -> HF conversion hands every tensor (the per-group qkv split included) to the
    writer as file pieces; their bytes are the tensors the read path computes, and copying them through memory
    (no ``copy_file_range``) writes the same files. A dtype change reads tensors instead."""
    from lcrecipes.checkpoint.convert import safetensors_out
    from lcrecipes.checkpoint.convert.megatron import MegatronReader

    convert("hf", "megatron", save_hf(tmp_path / "hf", "qwen2"), tmp_path / "mg")
    reader = MegatronReader(tmp_path / "mg")
    read = {k: v for block in reader.blocks() for k, v in block.items()}
    stored = {k: v for block in reader.stored_blocks(torch.float32) for k, v in block.items()}
    assert stored.keys() == read.keys() and not any(isinstance(v, torch.Tensor) for v in stored.values())
    assert len(stored["model.layers.0.self_attn.q_proj.weight"]) == 2  # one piece per KV group
    for name, pieces in stored.items():
        raw = b"".join(Path(f).read_bytes()[a:a + n] for f, a, n in pieces)
        assert raw == read[name].contiguous().numpy().tobytes(), name
    assert all(isinstance(v, torch.Tensor) for block in reader.stored_blocks(torch.bfloat16) for v in block.values())

    convert("megatron", "hf", tmp_path / "mg", tmp_path / "kernel", max_shard_bytes=60_000)

    def unsupported(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(safetensors_out.os, "copy_file_range", unsupported)
    convert("megatron", "hf", tmp_path / "mg", tmp_path / "memory", max_shard_bytes=60_000)
    shards = sorted(p.name for p in (tmp_path / "kernel").glob("*.safetensors"))
    assert len(shards) > 1 and shards == sorted(p.name for p in (tmp_path / "memory").glob("*.safetensors"))
    assert all((tmp_path / "kernel" / s).read_bytes() == (tmp_path / "memory" / s).read_bytes() for s in shards)


def test_trace_rows_finds_row_moves_and_nothing_else() -> None:
    from lcrecipes.checkpoint.convert.megatron import trace_rows

    shapes = {"a": (6, 3), "b": (4,), "c": (2, 3)}
    plan = trace_rows(lambda t: {
        "rev": t["a"].flip(0), "mid": t["a"][2:4], "half": t["b"].chunk(2)[1],
        "gap": torch.cat([t["a"][:1], t["a"][3:]]), "scaled": t["a"] * 2, "shifted": t["b"] + 1,
        "transposed": t["a"].T, "cast": t["b"].float(), "two_inputs": torch.cat([t["a"], t["c"]]),
    }, shapes)  # fmt: skip
    assert plan == {"rev": ("a", [(5 - i, 6 - i) for i in range(6)]), "mid": ("a", [(2, 4)]),
                    "half": ("b", [(2, 4)]), "gap": ("a", [(0, 1), (3, 6)]), "scaled": None, "shifted": None,
                    "transposed": None, "cast": None, "two_inputs": None}
    assert trace_rows(lambda t: {"x": t["a"].view(3, 6)}, shapes) is None  # fails on the row-number tensors


def test_a_truncated_megatron_file_is_named(tmp_path: Path) -> None:
    convert("hf", "megatron", save_hf(tmp_path / "hf"), tmp_path / "mg")
    victim = next((tmp_path / "mg").glob("*.distcp"))
    os.truncate(victim, victim.stat().st_size - 100)
    with pytest.raises(ConvertError, match=rf"{victim.name}: truncated: .* places records up to byte"):
        convert("megatron", "hf", tmp_path / "mg", tmp_path / "out")
