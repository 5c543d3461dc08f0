"""``preflight`` with ``parallel.backend=megatron`` (gloo ranks, CUDA placement redirected to CPU by
``tests.megatron_cpu``; fp32, 2 steps, 2 micro-batches per step):

- at CP=2 (ring) it passes, and both its CP=1 reference and its CP=2 run give the losses of a one-process run of
  the same recipe (1e-5 relative); an attention that ignores document boundaries fails it;
- at TP=2 (CP=1) its losses are the one-process losses too: tokens and losses are summed over the data ranks, not
  over the TP replicas (summing over the world would halve them).
"""

from __future__ import annotations

import pytest

from tests.distributed.test_train_megatron import _recipe, _set_grad_accum
from tests.megatron_cpu import run_ranks

pytestmark = pytest.mark.distributed
STEPS = 2
TOL = 1e-5


def _preflight(path: str, leaky: bool = False) -> dict:
    import torch

    from lcrecipes.config import load_recipe
    from lcrecipes.train import preflight
    from lcrecipes.train.mesh import build_mesh

    recipe = load_recipe(path)
    p = recipe.cfg.parallel
    attention = None
    if leaky:
        from tests.distributed.test_train_deepspeed import _register_leaky_attention

        attention = _register_leaky_attention()
    report = preflight(recipe, steps=STEPS, attention=attention, mesh=build_mesh(p.cp, p.tp, p.pp),
                       device=torch.device("cpu"))
    return {"passed": report.passed, "ref": report.ref_loss, "cp": report.cp_loss, "ref_grad": report.ref_grad,
            "cp_grad": report.cp_grad, "table": report.table()}


def _worker(rank: int, world: int, runs: list[tuple[str, bool]]) -> list[dict]:
    from tests.megatron_cpu import redirect_cuda_to_cpu

    redirect_cuda_to_cpu(type_as_cuda=True)
    return [_preflight(path, leaky) for path, leaky in runs]


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict:
    from lcrecipes.train.synthetic import write_synthetic_shards

    tmp = tmp_path_factory.mktemp("preflight_mg")
    write_synthetic_shards(tmp / "data", seq_len=64, n_train=16, n_eval=4, vocab_size=64)
    paths = {"one": _recipe(tmp, "one", 1), "cp2": _recipe(tmp, "cp2", 2, cp=2), "tp2": _recipe(tmp, "tp2", 2, tp=2)}
    for path in paths.values():
        _set_grad_accum(path, 2)
    (one,) = run_ranks(_worker, 1, [(str(paths["one"]), False)])[0]
    cp2, leaky, tp2 = run_ranks(_worker, 2, [(str(paths["cp2"]), False), (str(paths["cp2"]), True),
                                             (str(paths["tp2"]), False)], timeout_s=400)[0]
    return {"one": one, "cp2": cp2, "leaky": leaky, "tp2": tp2}


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) == STEPS and all(abs(x - y) <= TOL * abs(y) for x, y in zip(a, b))


def test_preflight_at_cp2_passes_and_equals_the_one_process_run(reports) -> None:
    one, cp2 = reports["one"], reports["cp2"]
    assert one["passed"] and cp2["passed"], cp2["table"]
    assert _close(cp2["ref"], one["ref"]) and _close(cp2["cp"], one["ref"]), (cp2, one)
    assert _close(cp2["ref_grad"], one["ref_grad"]), (cp2, one)


def test_preflight_fails_an_attention_that_crosses_documents(reports) -> None:
    leaky = reports["leaky"]
    assert not leaky["passed"] and "FAIL" in leaky["table"], leaky["table"]
    assert _close(leaky["ref"], reports["one"]["ref"])  # the reference is unaffected


def test_preflight_at_tp2_counts_tokens_over_data_ranks_only(reports) -> None:
    tp2, one = reports["tp2"], reports["one"]
    assert tp2["passed"] and _close(tp2["ref"], one["ref"]) and _close(tp2["cp"], one["ref"]), (tp2, one)
