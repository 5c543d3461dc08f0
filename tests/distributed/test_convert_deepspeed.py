"""A ZeRO-3 checkpoint from a 2-rank DeepSpeed run (CPU accelerator, gloo, torch AdamW) converts to HF through
``zero_to_fp32`` and reloads with ``AutoModelForCausalLM``: weights equal the run's gathered fp32 parameters
bitwise and logits are identical. A missing optimizer shard and a pickle outside the allow-list are refused.
"""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lcrecipes.checkpoint.convert import ConvertError, convert
from lcrecipes.models import get_family, hf_config_from_spec
from tests.megatron_cpu import run_ranks

pytestmark = pytest.mark.distributed


def _spec():
    return get_family("qwen2").tiny_spec(tie_embeddings=True)  # qkv bias + tied embeddings (a shared param)


def _train_and_save(rank: int, world_size: int, out: str) -> dict[str, torch.Tensor] | None:
    import deepspeed

    from lcrecipes.checkpoint.convert.base import write_spec

    deepspeed.init_distributed(dist_backend="gloo")
    spec = _spec()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config_from_spec(spec))
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
              "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
                                      config=config)
    ids = torch.randint(0, spec.vocab_size, (1, 16), generator=torch.Generator().manual_seed(rank))
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    engine.step()  # weights now differ from the init
    engine.save_checkpoint(out, tag="native", save_latest=False)
    params = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        full = {k: p.detach().clone() for k, p in params.items()}
    if rank == 0:
        write_spec(spec, Path(out))
    return full if rank == 0 else None


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(ids).logits


def test_zero3_checkpoint_converts_and_reloads_with_equal_logits(tmp_path: Path) -> None:
    ckpt, dst = tmp_path / "step_1", tmp_path / "hf"
    full = run_ranks(_train_and_save, 2, str(ckpt))[0]
    res = convert("deepspeed", "hf", ckpt, dst, verify=True)
    assert res.dtype == "fp32" and res.verify.max_abs_diff == 0.0
    loaded = AutoModelForCausalLM.from_pretrained(dst, local_files_only=True)
    assert loaded.config.tie_word_embeddings
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in full.items()), "weights differ from the gathered parameters"
    reference = AutoModelForCausalLM.from_config(hf_config_from_spec(_spec()))
    assert reference.load_state_dict(full, strict=False).missing_keys == ["lm_head.weight"]  # tied to the embedding
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(5))
    assert torch.equal(_logits(loaded, ids), _logits(reference, ids))

    broken = tmp_path / "missing_shard"
    shutil.copytree(ckpt, broken)
    next((broken / "native").glob("*_optim_states.pt")).unlink()
    with pytest.raises(ConvertError, match="optim_states"):
        convert("deepspeed", "hf", broken, tmp_path / "never")
    assert not (tmp_path / "never").exists()

    evil = tmp_path / "evil"
    shutil.copytree(ckpt, evil)
    model_states = next((evil / "native").glob("*_model_states.pt"))
    buf = io.BytesIO()
    pickle.dump({"module": {}, "payload": shutil.rmtree}, buf)  # a global outside the allow-list
    model_states.write_bytes(buf.getvalue())
    with pytest.raises(ConvertError, match="refused to unpickle"):
        convert("deepspeed", "hf", evil, tmp_path / "never")
    assert evil.is_dir() and not (tmp_path / "never").exists()
