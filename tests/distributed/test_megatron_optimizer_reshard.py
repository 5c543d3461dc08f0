"""Megatron distributed optimizer checkpoints load at another layout, optimizer state included (2 gloo ranks, CUDA
placement redirected to CPU by ``tests.megatron_cpu``; fp32).

A DP=2 run (distributed optimizer, one micro-batch per DP rank) trains 4 AdamW steps and saves after step 2. Loading
that checkpoint at DP=1 (one process, 2 micro-batches per step: the same global batch) and at TP=2 (2 ranks), then
training steps 3-4, gives the uninterrupted run's losses and grad norms to 1e-6 and its final parameters to 1e-5.
Adam's moments must have been restored for that: a run from the saved weights with fresh optimizer state differs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed.test_train_megatron import _recipe, _set_grad_accum, _step_micro_batches
from tests.megatron_cpu import run_ranks

pytestmark = pytest.mark.distributed
STEPS, SAVE_AT = 4, 2
TOL = 1e-6


def _train(path: str, ckpt: Path, load: bool, fresh_optimizer: bool = False) -> dict:
    """Steps 1-4 saving after step 2, or (``load``) load the step-2 checkpoint and run steps 3-4."""
    import torch

    from lcrecipes.config import load_recipe
    from lcrecipes.data.shards import ShardDataset
    from lcrecipes.models.megatron import load_checkpoint
    from lcrecipes.train.backends import get_backend
    from lcrecipes.train.loss import global_target_tokens, loss_weight, reduce_sums
    from lcrecipes.train.mesh import build_mesh

    recipe = load_recipe(path)
    p = recipe.cfg.parallel
    mesh = build_mesh(p.cp, p.tp, p.pp)
    ds = ShardDataset(Path(recipe.cfg.data.out_dir) / "train")
    backend = get_backend("megatron")(recipe, mesh, torch.device("cpu"), "ring")
    backend.setup()
    out = {"loss": [], "norm": []}
    try:
        if load and fresh_optimizer:
            load_checkpoint(backend.model.module, ckpt / "model")
        elif load:
            backend.load(ckpt)
        for s in range(SAVE_AT if load else 0, STEPS):
            mbs = _step_micro_batches(ds, s, mesh)
            tokens = global_target_tokens(mbs, mesh.data_group)
            loss = backend.forward_backward(mbs, loss_weight(tokens))
            out["loss"].append(reduce_sums([loss], mesh.data_group)[0] / tokens)
            out["norm"].append(backend.optimizer_step(1e-3 * (s + 1)))
            if not load and s + 1 == SAVE_AT:
                ckpt.mkdir(parents=True, exist_ok=True)
                backend.save(ckpt)
        params = backend.full_params()
        out["params"] = params if mesh.rank == 0 else None
    finally:
        backend.close()
    return out


def _worker(rank: int, world: int, runs: list[tuple[str, str, bool, bool]]) -> list[dict]:
    from tests.megatron_cpu import redirect_cuda_to_cpu

    redirect_cuda_to_cpu(type_as_cuda=True)
    return [_train(path, Path(ckpt), load, fresh) for path, ckpt, load, fresh in runs]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    from lcrecipes.train.synthetic import write_synthetic_shards

    tmp = tmp_path_factory.mktemp("optim_reshard")
    write_synthetic_shards(tmp / "data", seq_len=64, n_train=16, n_eval=4, vocab_size=64)
    ckpt = str(tmp / "ckpt_dp2")
    dp2, tp2 = _recipe(tmp, "dp2", 2), _recipe(tmp, "tp2", 2, tp=2)
    dp1 = _recipe(tmp, "dp1", 1)
    _set_grad_accum(dp1, 2)
    _set_grad_accum(tp2, 2)
    two = run_ranks(_worker, 2, [(str(dp2), ckpt, False, False), (str(tp2), ckpt, True, False)], timeout_s=300)
    one = run_ranks(_worker, 1, [(str(dp1), ckpt, True, False), (str(dp1), ckpt, True, True)], timeout_s=300)
    return {"full": two[0][0], "tp2": two[0][1], "dp1": one[0][0], "fresh": one[0][1]}


@pytest.mark.parametrize("layout", ["dp1", "tp2"])
def test_dp2_optimizer_checkpoint_resumes_at_another_layout(runs, layout) -> None:
    full, got = runs["full"], runs[layout]
    assert len(got["loss"]) == STEPS - SAVE_AT
    for a, b in zip(got["loss"] + got["norm"], full["loss"][SAVE_AT:] + full["norm"][SAVE_AT:]):
        assert abs(a - b) <= TOL * max(abs(b), 1.0), (layout, got, full)
    diffs = {n: float((got["params"][n] - full["params"][n]).abs().max()) for n in full["params"]}
    assert max(diffs.values()) <= 1e-5, {n: d for n, d in diffs.items() if d > 1e-5}


def test_fresh_optimizer_state_would_differ(runs) -> None:
    """The check above has teeth: without Adam's moments the same steps give other losses."""
    full, fresh = runs["full"], runs["fresh"]
    assert abs(fresh["loss"][1] - full["loss"][SAVE_AT + 1]) > 1e-4, (fresh, full)
