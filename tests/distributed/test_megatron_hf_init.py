"""The Megatron backend initialised from a HF checkpoint (``model.hf_path``, weights streamed per TP rank / PP
stage from the safetensors) gives transformers' loss on the same packed sequence, at TP=2 and at PP=2 (2 gloo
ranks, CUDA placement redirected to CPU by ``tests.megatron_cpu``). Tolerance: 1e-5 relative (fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.distributed.test_train_megatron import SEQ, VOCAB, _recipe
from tests.megatron_cpu import run_ranks

pytestmark = pytest.mark.distributed
TOL = 1e-5


def _hf_loss(hf_dir: str, data_dir: str) -> float:
    """Loss sum (nats) of transformers' model on eval sequence 0 (sdpa, packed position ids)."""
    import torch
    from transformers import AutoModelForCausalLM

    from lcrecipes.data.shards import ShardDataset
    from lcrecipes.train.batch import concat_samples, make_labels
    from lcrecipes.train.loss import token_loss_sum

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    seq = concat_samples([ShardDataset(Path(data_dir) / "eval")[0]])
    cu = seq["cu_seqlens"]
    labels = make_labels(seq["input_ids"], seq["loss_mask"], cu)
    pos = torch.arange(SEQ) - torch.repeat_interleave(cu[:-1], cu[1:] - cu[:-1])
    with torch.no_grad():
        logits = model(input_ids=seq["input_ids"][None], position_ids=pos[None], use_cache=False).logits
    return float(token_loss_sum(logits, labels[None]))


def _worker(rank: int, world: int, paths: list[str]) -> list[float]:
    import torch

    from lcrecipes.config import load_recipe
    from lcrecipes.data.shards import ShardDataset
    from lcrecipes.train.backends import get_backend
    from lcrecipes.train.batch import make_micro_batch
    from lcrecipes.train.mesh import build_mesh
    from tests.megatron_cpu import redirect_cuda_to_cpu

    redirect_cuda_to_cpu(type_as_cuda=True)
    out = []
    for path in paths:
        recipe = load_recipe(path)
        p = recipe.cfg.parallel
        backend = get_backend("megatron")(recipe, build_mesh(p.cp, p.tp, p.pp), torch.device("cpu"), "ring")
        backend.setup()
        out.append(backend.eval_loss(make_micro_batch([ShardDataset(Path(recipe.cfg.data.out_dir) / "eval")[0]],
                                                      1, 0)))
        backend.close()
    return out


def test_hf_initialised_backend_matches_transformers_at_tp2_and_pp2(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from lcrecipes.models import get_family, hf_config_from_spec
    from lcrecipes.train.synthetic import write_synthetic_shards

    write_synthetic_shards(tmp_path / "data", seq_len=SEQ, n_train=4, n_eval=2, vocab_size=VOCAB)
    spec = get_family("llama").tiny_spec(vocab_size=VOCAB, ffn_hidden_size=128, max_position_embeddings=256)
    torch.manual_seed(3)
    AutoModelForCausalLM.from_config(hf_config_from_spec(spec)).save_pretrained(tmp_path / "hf")
    paths = [_recipe(tmp_path, "tp2", 2, tp=2), _recipe(tmp_path, "pp2", 2, pp=2)]
    for path in paths:
        data = yaml.safe_load(path.read_text())
        data["model"]["hf_path"] = str(tmp_path / "hf")
        path.write_text(yaml.safe_dump(data))
    want = _hf_loss(str(tmp_path / "hf"), str(tmp_path / "data"))
    for rank_losses in run_ranks(_worker, 2, [str(p) for p in paths], timeout_s=300):
        for got in rank_losses:
            assert abs(got - want) <= TOL * want, (rank_losses, want)
