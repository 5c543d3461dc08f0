"""DeepSpeed ZeRO-3 training on real gloo ranks, against single-process references.

- 2 ranks, CP=2 (ring): the first step's loss and full gradients equal a single-process HF model (transformers'
  own sdpa with packed position ids) to 1e-5 in fp32, with 2 accumulation micro-batches, one of which leaves
  rank 1 without any target token (no NaN);
- preflight passes for ring and fails for an attention that ignores document boundaries;
- the loop: the loss falls over 20 steps; a ``lcr train`` under torchrun SIGKILLed mid-way (the agent and every
  worker, each in its own session) and resumed logs exactly the losses of the uninterrupted run (fp32);
- plain ``lcr train`` (one process) saves and exits with code 75 on SIGUSR1.

One DeepSpeed extension cache (TORCH_EXTENSIONS_DIR, set by tests/conftest.py) serves every process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.distributed._spawn import run_distributed

pytestmark = pytest.mark.distributed
REPO = Path(__file__).resolve().parents[2]
SEQ = 64
VOCAB = 64
TOL = 1e-5


def _recipe(tmp: Path, name: str, **sections) -> Path:
    base = {
        "name": name, "run_dir": str(tmp / "runs" / name),
        "model": {"family": "llama", "vocab_size": VOCAB, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
                  "num_kv_heads": 2, "head_dim": 16, "ffn_hidden_size": 128, "max_position_embeddings": 256},
        "data": {"kind": "lm", "out_dir": str(tmp / "data"), "seq_len": SEQ},
        "parallel": {"backend": "deepspeed", "cp": 2, "sp": "ring", "zero_stage": 3},
        "train": {"steps": 20, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2, "log_every": 1, "eval_batches": 2,
                  "tensorboard": False},
        "checkpoint": {"every": 4, "keep_last": 2},
        "launch": {"gpus_per_node": 2},
    }
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values} if isinstance(values, dict) else values
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    from lcrecipes.train.synthetic import write_synthetic_shards

    tmp = tmp_path_factory.mktemp("train_ds")
    write_synthetic_shards(tmp / "data", seq_len=SEQ, n_train=64, n_eval=8, vocab_size=VOCAB)
    return tmp


# ----- in-process checks on 2 spawned ranks ---------------------------------------------------------------------
def _zero_target_sample() -> dict:
    """One 64-token document whose targets all sit in its first quarter: at CP=2 (4 chunks of 16, rank 1 keeps
    chunks 1 and 2) rank 1 has no target token."""
    import torch

    ids = torch.arange(SEQ) % (VOCAB - 1) + 1
    mask = torch.zeros(SEQ, dtype=torch.bool)
    mask[1:16] = True
    return {"input_ids": ids, "loss_mask": mask, "cu_seqlens": torch.tensor([0, SEQ], dtype=torch.int32)}


def _reference(cfg, samples: list[dict]) -> tuple[float, dict]:
    """Single-process HF model, transformers' own sdpa on the packed sequences: (loss, grads by name)."""
    import torch

    from lcrecipes.train.batch import concat_samples, make_labels
    from lcrecipes.train.hf_model import build_hf_model
    from lcrecipes.train.loss import token_loss_sum

    model = build_hf_model(cfg, "sdpa")
    model.set_attn_implementation("sdpa")
    total, tokens = 0.0, 0
    for s in samples:
        seq = concat_samples([s])
        labels = make_labels(seq["input_ids"], seq["loss_mask"], seq["cu_seqlens"])
        cu = seq["cu_seqlens"]
        pos = torch.arange(SEQ) - torch.repeat_interleave(cu[:-1], cu[1:] - cu[:-1])
        out = model(input_ids=seq["input_ids"][None], position_ids=pos[None], use_cache=False)
        total = total + token_loss_sum(out.logits, labels[None])
        tokens += int((labels != -100).sum())
    (total / tokens).backward()
    return float(total.detach()) / tokens, {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _first_step(recipe, mesh, device) -> dict:
    import torch

    from lcrecipes.data.shards import ShardDataset
    from lcrecipes.train.backends import get_backend
    from lcrecipes.train.batch import make_micro_batch
    from lcrecipes.train.loss import global_target_tokens, loss_weight, reduce_sums

    cfg = recipe.cfg
    samples = [ShardDataset(Path(cfg.data.out_dir) / "train")[0], _zero_target_sample()]
    mbs = [make_micro_batch([s], mesh.cp, mesh.cp_rank) for s in samples]
    backend = get_backend("deepspeed")(recipe, mesh, device, "ring")
    backend.setup()
    tokens = global_target_tokens(mbs)
    loss = reduce_sums([backend.forward_backward(mbs, loss_weight(tokens))])[0] / tokens
    grads = backend.full_grads()
    norm = backend.optimizer_step(1e-3)
    backend.close()
    ref_loss, ref_grads = _reference(cfg, samples)
    diffs = {n: float((grads[n] - g).abs().max()) for n, g in ref_grads.items()}
    ref_norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in ref_grads.values())))
    return {"loss": loss, "ref_loss": ref_loss, "max_grad_diff": max(diffs.values()), "names": sorted(diffs),
            "finite": all(bool(torch.isfinite(g).all()) for g in grads.values()), "norm": norm,
            "ref_norm": ref_norm, "local_targets": [mb.target_tokens for mb in mbs]}


def _register_leaky_attention() -> str:
    """An all-gather attention that is causal over the whole packed sequence, ignoring document boundaries."""
    import torch

    from lcrecipes.parallel.attention import ATTENTIONS, CPAttention, register_attention
    from lcrecipes.parallel.comm import all_gather_tokens

    class LeakyAttention(CPAttention):
        name = "test_leaky"

        def forward(self, q, k, v, meta, group, *, scale, causal):
            keys, values = (all_gather_tokens(x, group) for x in (k, v))  # [cp * T_local, H_kv, D]
            rep = q.shape[1] // k.shape[1]
            keys, values = keys.repeat_interleave(rep, 1), values.repeat_interleave(rep, 1)
            allowed = meta.global_index_all.flatten()[None, :] <= meta.global_index[:, None]
            scores = torch.einsum("qhd,khd->hqk", q, keys) * scale
            probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
            return torch.einsum("hqk,khd->qhd", probs, values)

    if LeakyAttention.name not in ATTENTIONS:
        register_attention(LeakyAttention)
    return LeakyAttention.name


def _cp_worker(rank: int, world: int, recipe_path: str, full_recipe_path: str) -> dict:
    """First-step check, preflight (good and leaky), then the uninterrupted 20-step run of the loop (the same
    ``Trainer`` that ``lcr train`` runs; one process start instead of a second torchrun)."""
    from lcrecipes.config import load_recipe
    from lcrecipes.train import preflight
    from lcrecipes.train.loop import Trainer
    from lcrecipes.train.run import start_process

    recipe = load_recipe(recipe_path, ["train.grad_accum=2"])
    mesh, device = start_process(recipe)
    out = {"first_step": _first_step(recipe, mesh, device)}
    recipe = load_recipe(recipe_path)
    good = preflight(recipe, steps=2, mesh=mesh, device=device)
    bad = preflight(recipe, steps=2, attention=_register_leaky_attention(), mesh=mesh, device=device)
    out["preflight"] = {"good": (good.passed, good.loss_diff, good.grad_diff, good.table()),
                        "bad": (bad.passed, bad.loss_diff, bad.grad_diff, bad.table())}
    trainer = Trainer(load_recipe(full_recipe_path), mesh, device)
    try:
        out["exit_code"] = trainer.run()
    finally:
        trainer.close()
    return out


@pytest.fixture(scope="module")
def cp_results(work) -> list[dict]:
    return run_distributed(_cp_worker, 2, str(_recipe(work, "cp")), str(_recipe(work, "full")), timeout=300)


def test_first_step_loss_and_grads_match_single_process(cp_results) -> None:
    for r in cp_results:
        fs = r["first_step"]
        assert abs(fs["loss"] - fs["ref_loss"]) <= TOL, fs
        assert fs["max_grad_diff"] <= TOL, fs
        assert abs(fs["norm"] - fs["ref_norm"]) <= 1e-4 * fs["ref_norm"], fs
        assert len(fs["names"]) == 2 * 9 + 3  # every parameter compared (2 layers x 9, embed, norm, head)


def test_rank_without_target_tokens_gives_no_nan(cp_results) -> None:
    assert cp_results[1]["first_step"]["local_targets"][1] == 0  # the second micro-batch: nothing on rank 1
    assert cp_results[0]["first_step"]["local_targets"][1] > 0
    for r in cp_results:
        assert r["first_step"]["finite"] and np.isfinite(r["first_step"]["loss"])


def test_preflight_passes_for_ring_and_fails_for_leaky_attention(cp_results) -> None:
    passed, loss_diff, grad_diff, table = cp_results[0]["preflight"]["good"]
    assert passed, table
    assert "PASS" in table
    passed, loss_diff, grad_diff, table = cp_results[0]["preflight"]["bad"]
    assert not passed and "FAIL" in table, table
    assert grad_diff > 1e-2 and loss_diff > 100 * cp_results[0]["preflight"]["good"][1], table


# ----- the CLI under torchrun: loss falls, kill and resume ------------------------------------------------------
def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def _torchrun(recipe: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
            "lcrecipes.cli", "train", str(recipe), *overrides]


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 150) -> None:
    deadline = time.monotonic() + timeout
    path = run_dir / "logs" / "metrics.jsonl"
    while time.monotonic() < deadline:
        if path.is_file() and max(_losses(run_dir), default=0) >= step:
            return
        assert proc.poll() is None, f"training exited early with {proc.returncode}"
        time.sleep(0.2)
    raise TimeoutError(f"step {step} not logged in {timeout} s")


def _run_cli(cmd: list[str], timeout: float = 200) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def uninterrupted(work, cp_results) -> Path:
    assert [r["exit_code"] for r in cp_results] == [0, 0]
    return work / "runs" / "full"


def test_loss_falls_and_checkpoints_verify(uninterrupted) -> None:
    from lcrecipes.checkpoint import CheckpointManager, verify_checkpoint

    losses = _losses(uninterrupted)
    assert sorted(losses) == list(range(1, 21))
    first, last = np.mean([losses[s] for s in (1, 2, 3)]), np.mean([losses[s] for s in (18, 19, 20)])
    assert last < first - 0.5, losses
    manager = CheckpointManager(uninterrupted / "checkpoints")
    assert manager.latest().name == "step_20" and manager.steps() == [16, 20]  # keep_last=2
    state = verify_checkpoint(manager.latest(), "full")
    assert state["step"] == 20 and len(state["rng"]) == 2 and state["sampler"]["position"] == 20


def _kill_tree(proc: subprocess.Popen) -> list[int]:
    """SIGKILL torchrun and every descendant at once (a lost node). torchrun starts each worker in a session of
    its own, so killing torchrun's process group would leave the workers running; returns the pids killed."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid)]
        tree += tree[0].children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, f"still running after SIGKILL: {alive}"
    return [p.pid for p in tree]


def test_kill_then_resume_reproduces_uninterrupted_losses(work, uninterrupted) -> None:
    recipe = _recipe(work, "killed")
    run_dir = work / "runs" / "killed"
    proc = subprocess.Popen(_torchrun(recipe), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_step(run_dir, 6, proc)  # step 4 is saved, 5 and 6 are not
    finally:
        killed = _kill_tree(proc)
    assert len(killed) >= 3, killed  # the agent and both workers
    assert (run_dir / "checkpoints" / "latest").read_text().strip() in ("step_4", "step_8")
    _run_cli(_torchrun(recipe))
    assert _losses(run_dir) == _losses(uninterrupted)  # exact, fp32


def test_single_process_train_saves_and_exits_75_on_sigusr1(work) -> None:
    from lcrecipes.checkpoint import CheckpointManager
    from lcrecipes.launch.env import PREEMPTED_EXIT_CODE

    recipe = _recipe(work, "single", parallel={"cp": 1}, launch={"gpus_per_node": 1},
                     train={"steps": 200}, checkpoint={"every": 0})
    run_dir = work / "runs" / "single"
    env = {k: v for k, v in _env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.Popen([sys.executable, "-m", "lcrecipes.cli", "train", str(recipe)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_step(run_dir, 3, proc)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-3000:]
    latest = CheckpointManager(run_dir / "checkpoints").latest()
    assert latest is not None and int(latest.name.split("_")[1]) == max(_losses(run_dir)) < 200
