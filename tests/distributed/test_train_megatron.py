"""Megatron-Core backend on real gloo ranks (CUDA placement redirected to CPU by ``tests.megatron_cpu``), against
the single-process Megatron run of the same recipe and data (fp32).

- loss trajectories (4 AdamW steps, packed documents, 2 micro-batches per step) at CP=2 (ring), TP=2, PP=2 (1F1B),
  DP=2 (distributed optimizer) and PP=2 x CP=2 (4 ranks) equal the one-process run to 1e-5, grad norms to 1e-5
  relative, step 1's full gradients (every parameter, by HF name) to 1e-5 and the final parameters to 1e-4;
- the one-process run's step-1 loss equals transformers' model (sdpa, packed position ids) on the same sequences:
  HF-initialised weights, and documents never attend across boundaries (the reference masks per document);
- the loop (``Trainer``) trains at CP=2, writes dist checkpoints + state.json; a run stopped after a save and
  resumed logs exactly the uninterrupted losses; a checkpoint saved at TP=2 loads at TP=1 (same eval loss);
- the 1M recipes select the Transformer Engine spec and give a valid TransformerConfig; on a GPU with Transformer
  Engine the TE spec gives the local spec's loss (``gpu`` marker).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.megatron_cpu import run_ranks

pytestmark = pytest.mark.distributed
SEQ = 64
VOCAB = 64
STEPS = 4
TOL = 1e-5
LAYOUTS = {  # name -> parallel overrides (2 ranks)
    "cp2": {"cp": 2},
    "tp2": {"tp": 2},
    "pp2": {"pp": 2},
    "dp2": {"distributed_optimizer": True},
}


def _recipe(tmp: Path, name: str, world: int, **parallel) -> Path:
    base = {
        "name": name, "run_dir": str(tmp / "runs" / name),
        "model": {"family": "llama", "vocab_size": VOCAB, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
                  "num_kv_heads": 2, "head_dim": 16, "ffn_hidden_size": 128, "max_position_embeddings": 256},
        "data": {"kind": "lm", "out_dir": str(tmp / "data"), "seq_len": SEQ},
        "parallel": {"backend": "megatron", "sp": "ring", "layer_spec": "local", **parallel},
        "train": {"steps": STEPS, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 1, "log_every": 1, "eval_batches": 2,
                  "tensorboard": False},
        "checkpoint": {"every": 2, "keep_last": 2},
        "launch": {"gpus_per_node": world},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    from lcrecipes.train.synthetic import write_synthetic_shards

    tmp = tmp_path_factory.mktemp("train_mg")
    write_synthetic_shards(tmp / "data", seq_len=SEQ, n_train=16, n_eval=4, vocab_size=VOCAB)
    return tmp


# ----- helpers run inside the ranks ------------------------------------------------------------------------------
def _step_micro_batches(ds, step: int, mesh) -> list:
    """Step ``step`` trains on sequences ``2 step`` and ``2 step + 1``: two micro-batches per rank, or one per DP
    rank when DP=2 (the same global batch)."""
    from lcrecipes.train.batch import make_micro_batch

    idx = [2 * step, 2 * step + 1][mesh.dp_rank::mesh.dp]
    return [make_micro_batch([ds[i]], mesh.cp, mesh.cp_rank) for i in idx]


def _trajectory(recipe_path: str, world: int) -> dict:
    import torch

    from lcrecipes.config import load_recipe
    from lcrecipes.data.shards import ShardDataset
    from lcrecipes.train.backends import get_backend
    from lcrecipes.train.loss import global_target_tokens, loss_weight, reduce_sums
    from lcrecipes.train.mesh import build_mesh

    recipe = load_recipe(recipe_path)
    p = recipe.cfg.parallel
    mesh = build_mesh(p.cp, p.tp, p.pp)
    ds = ShardDataset(Path(recipe.cfg.data.out_dir) / "train")
    backend = get_backend("megatron")(recipe, mesh, torch.device("cpu"), "ring")
    backend.setup()
    mbs = [_step_micro_batches(ds, s, mesh) for s in range(STEPS)]
    out = {"loss": [], "norm": [], "eval": None}
    try:
        for s in range(STEPS):
            tokens = global_target_tokens(mbs[s], mesh.data_group)
            loss = backend.forward_backward(mbs[s], loss_weight(tokens))
            if s == 0:
                grads = backend.full_grads()  # collective; rank 0 returns them
                out["grads"] = grads if mesh.rank == 0 else None
            out["loss"].append(reduce_sums([loss], mesh.data_group)[0] / tokens)
            out["norm"].append(backend.optimizer_step(1e-3 * (s + 1)))
        params = backend.full_params()
        out["params"] = params if mesh.rank == 0 else None
    finally:
        backend.close()
    return out


def _hf_first_loss(recipe_path: str) -> float:
    """Step 1's loss from transformers' own model (sdpa, packed position ids) on the same two sequences."""
    import torch

    from lcrecipes.config import load_recipe
    from lcrecipes.data.shards import ShardDataset
    from lcrecipes.train.batch import concat_samples, make_labels
    from lcrecipes.train.hf_model import build_hf_model
    from lcrecipes.train.loss import token_loss_sum

    cfg = load_recipe(recipe_path).cfg
    model = build_hf_model(cfg, "sdpa")
    model.set_attn_implementation("sdpa")
    ds = ShardDataset(Path(cfg.data.out_dir) / "train")
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in (0, 1):
            seq = concat_samples([ds[i]])
            cu = seq["cu_seqlens"]
            labels = make_labels(seq["input_ids"], seq["loss_mask"], cu)
            pos = torch.arange(SEQ) - torch.repeat_interleave(cu[:-1], cu[1:] - cu[:-1])
            logits = model(input_ids=seq["input_ids"][None], position_ids=pos[None], use_cache=False).logits
            total += float(token_loss_sum(logits, labels[None]))
            tokens += int((labels != -100).sum())
    return total / tokens


def _worker(rank: int, world: int, paths: list[str]) -> list[dict]:
    from tests.megatron_cpu import redirect_cuda_to_cpu

    redirect_cuda_to_cpu(type_as_cuda=True)
    return [_trajectory(p, world) for p in paths]


def _reference_worker(rank: int, world: int, path: str) -> dict:
    from tests.megatron_cpu import redirect_cuda_to_cpu

    redirect_cuda_to_cpu(type_as_cuda=True)
    return {**_trajectory(path, world), "hf_first_loss": _hf_first_loss(path)}


@pytest.fixture(scope="module")
def reference(work) -> dict:
    path = _recipe(work, "ref", 1)
    _set_grad_accum(path, 2)
    return run_ranks(_reference_worker, 1, str(path))[0]


def _set_grad_accum(path: Path, n: int) -> None:
    data = yaml.safe_load(path.read_text())
    data["train"]["grad_accum"] = n
    path.write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def parallel_runs(work) -> dict[str, list[dict]]:
    paths = []
    for name, parallel in LAYOUTS.items():
        path = _recipe(work, name, 2, **parallel)
        _set_grad_accum(path, 1 if name == "dp2" else 2)
        paths.append(str(path))
    results = run_ranks(_worker, 2, paths, timeout_s=400)
    return {name: [results[r][i] for r in range(2)] for i, name in enumerate(LAYOUTS)}


def test_single_process_megatron_matches_transformers(reference) -> None:
    assert abs(reference["loss"][0] - reference["hf_first_loss"]) <= TOL, reference
    assert reference["loss"][-1] < reference["loss"][0], reference


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_loss_trajectory_equals_single_process(reference, parallel_runs, layout) -> None:
    for r in parallel_runs[layout]:
        diffs = [abs(a - b) for a, b in zip(r["loss"], reference["loss"])]
        assert len(diffs) == STEPS and max(diffs) <= TOL, (layout, r["loss"], reference["loss"])
        for a, b in zip(r["norm"], reference["norm"]):
            assert abs(a - b) <= TOL * max(b, 1.0), (layout, r["norm"], reference["norm"])
    _check_full_tensors(parallel_runs[layout][0], reference)


def _check_full_tensors(run: dict, reference: dict) -> None:
    """Step 1's full gradients and the final parameters, by HF name, equal the single-process run's."""
    for key, tol in (("grads", TOL), ("params", 1e-4)):
        assert sorted(run[key]) == sorted(reference[key]) and len(run[key]) == 2 * 9 + 3
        diffs = {n: float((run[key][n] - reference[key][n]).abs().max()) for n in reference[key]}
        assert max(diffs.values()) <= tol, (key, {n: d for n, d in diffs.items() if d > tol})


# ----- PP=2 x CP=2 on 4 ranks ------------------------------------------------------------------------------------
def test_pp2_cp2_on_four_ranks_equals_single_process(work, reference) -> None:
    path = _recipe(work, "pp2cp2", 4, pp=2, cp=2)
    _set_grad_accum(path, 2)
    for r in run_ranks(_worker, 4, [str(path)], timeout_s=400):
        (res,) = r
        assert max(abs(a - b) for a, b in zip(res["loss"], reference["loss"])) <= TOL, (res["loss"], reference)
        for a, b in zip(res["norm"], reference["norm"]):
            assert abs(a - b) <= TOL * max(b, 1.0), (res["norm"], reference["norm"])
        if res["grads"] is not None:
            _check_full_tensors(res, reference)


# ----- the loop: train at CP=2, checkpoints, resume; dist checkpoint resharding TP=2 -> TP=1 ---------------------
def _losses(run_dir: Path) -> dict[int, float]:
    import json

    rows = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def _train(recipe_path: str, steps_then_stop: int | None = None) -> int:
    """``Trainer.run()``; or ``steps_then_stop`` steps, a save and a close (an interrupted run)."""
    import torch

    from lcrecipes.config import load_recipe
    from lcrecipes.train.loop import Trainer
    from lcrecipes.train.mesh import build_mesh

    recipe = load_recipe(recipe_path)
    p = recipe.cfg.parallel
    trainer = Trainer(recipe, build_mesh(p.cp, p.tp, p.pp), torch.device("cpu"))
    try:
        if steps_then_stop is None:
            return trainer.run()
        trainer.setup()
        for _ in range(steps_then_stop):
            trainer.log_step(trainer.train_step())
        trainer.save()
        return 0
    finally:
        trainer.close()


def _reshard(recipe_tp2: str, recipe_tp1: str, ckpt: str) -> dict:
    """Save at TP=2 (model + optimizer), load the model at TP=1 (DP=2): the same eval loss on one sequence."""
    import torch

    from lcrecipes.config import load_recipe
    from lcrecipes.data.shards import ShardDataset
    from lcrecipes.models.megatron import load_checkpoint
    from lcrecipes.train.backends import get_backend
    from lcrecipes.train.batch import make_micro_batch
    from lcrecipes.train.mesh import build_mesh

    out = {}
    for name, path in (("tp2", recipe_tp2), ("tp1", recipe_tp1)):
        recipe = load_recipe(path)
        p = recipe.cfg.parallel
        backend = get_backend("megatron")(recipe, build_mesh(p.cp, p.tp, p.pp), torch.device("cpu"), "ring")
        backend.setup()
        mb = make_micro_batch([ShardDataset(Path(recipe.cfg.data.out_dir) / "eval")[0]], 1, 0)
        if name == "tp2":
            backend.train_step([make_micro_batch([ShardDataset(Path(recipe.cfg.data.out_dir) / "train")[0]], 1, 0)],
                               1.0 / 40, 1e-2)  # move away from the init, so the load is seen
            Path(ckpt).mkdir(parents=True, exist_ok=True)
            backend.save(Path(ckpt))
        else:
            out["tp1_before_load"] = backend.eval_loss(mb)
            load_checkpoint(backend.model.module, Path(ckpt) / "model")
        out[name] = backend.eval_loss(mb)
        backend.close()
    return out


def _loop_worker(rank: int, world: int, full: str, killed: str, tp2: str, tp1: str, ckpt: str) -> dict:
    from tests.megatron_cpu import redirect_cuda_to_cpu

    redirect_cuda_to_cpu(type_as_cuda=True)
    codes = [_train(full), _train(killed, steps_then_stop=2), _train(killed)]
    return {"codes": codes, "reshard": _reshard(tp2, tp1, ckpt)}


@pytest.fixture(scope="module")
def loop_results(work) -> list[dict]:
    paths = [_recipe(work, "full", 2, cp=2), _recipe(work, "killed", 2, cp=2), _recipe(work, "r_tp2", 2, tp=2),
             _recipe(work, "r_tp1", 2)]
    return run_ranks(_loop_worker, 2, *map(str, paths), str(work / "reshard_ckpt"), timeout_s=400)


def test_trainer_trains_at_cp2_and_checkpoints(work, loop_results) -> None:
    from lcrecipes.checkpoint import CheckpointManager

    assert all(r["codes"] == [0, 0, 0] for r in loop_results)
    losses = _losses(work / "runs" / "full")
    assert sorted(losses) == list(range(1, STEPS + 1)) and losses[STEPS] < losses[1], losses
    manager = CheckpointManager(work / "runs" / "full" / "checkpoints")
    latest = manager.latest()
    assert latest.name == f"step_{STEPS}" and (latest / "model" / "metadata.json").is_file()
    assert (latest / "optim" / "metadata.json").is_file() and (latest / "config.json").is_file()


def test_resume_equals_uninterrupted_run(work, loop_results) -> None:
    assert _losses(work / "runs" / "killed") == _losses(work / "runs" / "full")  # exact, fp32


def test_dist_checkpoint_saved_at_tp2_loads_at_tp1(loop_results) -> None:
    for r in loop_results:
        res = r["reshard"]
        assert abs(res["tp1"] - res["tp2"]) <= 1e-4 * abs(res["tp2"]), res
        assert abs(res["tp1_before_load"] - res["tp2"]) > 1e-3 * abs(res["tp2"]), res


# ----- the 1M recipes; Transformer Engine on GPU -----------------------------------------------------------------
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["answer_only", "doc_ids", "ids_content", "ids_quotes", "reasoning"])
def test_1m_recipes_select_the_te_spec_and_validate(name: str) -> None:
    import torch

    from lcrecipes.config import load_recipe
    from lcrecipes.models.megatron import resolve_layer_spec_kind, transformer_config
    from lcrecipes.train.backends.megatron import DTYPES, config_overrides

    cfg = load_recipe(REPO / "recipes" / "qwen2.5-7b-1m" / f"{name}.yaml").cfg
    p = cfg.parallel
    assert p.backend == "megatron" and resolve_layer_spec_kind(p.layer_spec) == "te" and p.sp == "te"
    config = transformer_config(cfg.model.to_spec(), p, DTYPES[cfg.train.dtype], **config_overrides(cfg, "te"))
    assert (config.tensor_model_parallel_size, config.context_parallel_size) == (p.tp, p.cp)
    assert config.cp_comm_type == p.cp_comm_type and config.calculate_per_token_loss
    assert config.params_dtype == torch.bfloat16 and config.recompute_granularity == "full"
    assert cfg.data.seq_len % (2 * p.cp * p.tp) == 0


def _te_vs_local(local: str, te: str) -> list[float]:
    """First-sequence eval loss (bf16) with the local spec (our ring core_attention) and the TE spec, one GPU."""
    import torch

    from lcrecipes.config import load_recipe
    from lcrecipes.data.shards import ShardDataset
    from lcrecipes.train.backends import get_backend
    from lcrecipes.train.mesh import build_mesh

    out = []
    for path in (local, te):
        recipe = load_recipe(path, ["train.dtype=bf16"])
        backend = get_backend("megatron")(recipe, build_mesh(1), torch.device("cuda", 0), recipe.cfg.parallel.sp)
        backend.setup()
        mbs = _step_micro_batches(ShardDataset(Path(recipe.cfg.data.out_dir) / "train"), 0, build_mesh(1))
        out.append(backend.eval_loss(mbs[0]))
        backend.close()
    return out


@pytest.mark.gpu
def test_te_spec_matches_local_spec_on_gpu(work) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("transformer_engine")
    local, te = _recipe(work, "gpu_local", 1), _recipe(work, "gpu_te", 1, layer_spec="te", sp="te")
    loss_local, loss_te = _te_vs_local(str(local), str(te))  # in this process: NCCL, no CPU redirection
    assert abs(loss_local - loss_te) <= 2e-2 * loss_local, (loss_local, loss_te)  # bf16


def _setup_without_redirect(rank: int, world: int, path: str) -> str:
    import torch

    from lcrecipes.config import load_recipe
    from lcrecipes.train.backends import get_backend
    from lcrecipes.train.mesh import build_mesh

    backend = get_backend("megatron")(load_recipe(path), build_mesh(1), torch.device("cpu"), "ring")
    try:
        backend.setup()
    except RuntimeError as e:
        return str(e)
    return "no error"


def test_cpu_torch_without_the_fixture_gets_a_clear_error(work) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    (msg,) = run_ranks(_setup_without_redirect, 1, str(_recipe(work, "no_redirect", 1)))
    assert "needs CUDA" in msg and "deepspeed" in msg, msg
