"""Backend registry completeness, the DeepSpeed config, metrics sinks, the stop-signal hook and synthetic shards."""

from __future__ import annotations

import inspect
import json
import os
import signal
from pathlib import Path

import pytest

from lcrecipes.config import load_recipe
from lcrecipes.train.backends import BACKENDS, Backend, get_backend
from lcrecipes.train.backends.deepspeed import ds_config
from lcrecipes.train.metrics import MetricsLogger, format_row
from lcrecipes.train.signals import StopRequest

CONTRACT = ("setup", "forward_backward", "optimizer_step", "eval_loss", "save", "load", "full_grads", "full_params")


def test_every_registered_backend_fills_the_contract() -> None:
    assert "deepspeed" in BACKENDS
    for name, cls in BACKENDS.items():
        assert issubclass(cls, Backend) and cls.name == name
        for method in CONTRACT:
            assert getattr(cls, method) is not getattr(Backend, method), f"{name} does not implement {method}"
        assert list(inspect.signature(cls.__init__).parameters) == ["self", "recipe", "mesh", "device", "attention"]


def test_parallel_backend_values_are_registered() -> None:
    from lcrecipes.config.schema import ParallelConfig

    allowed = {"deepspeed", "megatron"}
    assert ParallelConfig().backend in BACKENDS
    assert set(BACKENDS) <= allowed
    with pytest.raises(KeyError, match="unknown training backend 'nope'.*registered"):
        get_backend("nope")


def test_deepspeed_config_follows_the_recipe() -> None:
    cfg = load_recipe(None, ["parallel.zero_stage=3", "parallel.offload_optimizer=true", "parallel.offload_params=true",
                             "train.dtype=bf16", "train.grad_accum=4", "optim.grad_clip=0.5",
                             "optim.torch_adam=false"]).cfg
    c = ds_config(cfg)
    assert c["zero_optimization"]["stage"] == 3 and c["gradient_accumulation_steps"] == 4
    assert c["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert c["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert c["bf16"]["enabled"] and c["gradient_clipping"] == 0.5 and c["optimizer"]["type"] == "AdamW"
    plain = ds_config(load_recipe(None).cfg)
    assert "optimizer" not in plain and "offload_param" not in plain["zero_optimization"]


def test_metrics_jsonl_console_and_truncate_on_resume(tmp_path: Path, caplog) -> None:
    m = MetricsLogger(tmp_path, is_main=True, tensorboard=True)
    row = {"kind": "train", "step": 1, "steps": 3, "loss": 2.5, "grad_norm": 1.0, "lr": 1e-3, "tokens_per_s": 10.0,
           "mfu": 0.25, "peak_mem_gib": 1.5, "step_s": 0.1}
    with caplog.at_level("INFO", logger="lcrecipes.train"):
        for step in (1, 2, 3):
            m.log({**row, "step": step})
    m.close()
    assert "step 3/3 | loss 2.5000 | grad 1.000 | lr 1.00e-03 | tok/s 10 | mfu 25.0% | mem 1.50 GiB" in caplog.text
    m.truncate_after(1)
    rows = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    assert list((tmp_path / "logs" / "tensorboard").iterdir())
    assert format_row({"kind": "eval", "step": 4, "loss": 1.0, "target_tokens": 9}).startswith("eval step 4")
    MetricsLogger(tmp_path / "other", is_main=False).log(row)  # other ranks write nothing
    assert not (tmp_path / "other").exists()


def test_stop_request_catches_sigusr1_and_sigterm_then_restores_handlers() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with StopRequest() as stop:
        assert not stop.agreed()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.agreed() and stop.received == "SIGUSR1"
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.agreed() and stop.received == "SIGTERM"
    assert signal.getsignal(signal.SIGUSR1) is before


def test_synthetic_shards_read_like_prepared_ones(tmp_path: Path) -> None:
    from lcrecipes.data.shards import ShardDataset
    from lcrecipes.train.synthetic import write_synthetic_shards

    write_synthetic_shards(tmp_path, seq_len=32, n_train=5, n_eval=2, vocab_size=40)
    train, ev = ShardDataset(tmp_path / "train", verify=True), ShardDataset(tmp_path / "eval")
    assert (len(train), len(ev), train.seq_len) == (5, 2, 32)
    x = train[0]
    assert int(x["cu_seqlens"][-1]) == 32 and x["loss_mask"].any() and int(x["input_ids"].max()) < 40


def test_missing_shards_tell_the_user_to_run_prepare(tmp_path: Path) -> None:
    from lcrecipes.train.data import MissingDataError, open_split

    cfg = load_recipe(None, [f"data.out_dir={tmp_path}"]).cfg
    with pytest.raises(MissingDataError, match=r"no packed train shards.*run `lcr prepare r\.yaml` first"):
        open_split(cfg, "train", "r.yaml")


def test_train_batches_resume_the_same_sequences_across_an_epoch(tmp_path: Path) -> None:
    import torch

    from lcrecipes.train.data import TrainBatches, open_split
    from lcrecipes.train.mesh import build_mesh
    from lcrecipes.train.synthetic import write_synthetic_shards

    write_synthetic_shards(tmp_path, seq_len=32, n_train=5, n_eval=1, vocab_size=40)
    cfg = load_recipe(None, [f"data.out_dir={tmp_path}", "data.seq_len=32", "data.kind=lm", "parallel.cp=1",
                             "train.grad_accum=2"]).cfg
    ds, mesh = open_split(cfg, "train"), build_mesh(1)
    first = TrainBatches(ds, cfg, mesh)
    for _ in range(2):
        first.next_step()  # 4 of 5 sequences
    state = json.loads(json.dumps(first.state_dict()))
    expected = [first.next_step() for _ in range(3)]  # crosses into epoch 1
    again = TrainBatches(ds, cfg, mesh)
    again.load_state_dict(state)
    for want, got in zip(expected, (again.next_step() for _ in range(3))):
        assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(want, got))
    assert again.state_dict()["epoch"] == 1


def test_metrics_truncate_drops_a_torn_last_line_and_names_a_bad_one(tmp_path: Path) -> None:
    m = MetricsLogger(tmp_path, is_main=True, tensorboard=False)
    for step in (1, 2):
        m.log({"kind": "eval", "step": step, "loss": 1.0, "target_tokens": 1})
    m.truncate_after(0)
    assert m.path.read_text() == "" and not [p for p in m.path.parent.iterdir() if p.name.startswith(".")]
    m.path.write_text('{"kind": "eval", "step": 1}\nnot json\n{"kind": "eval", "step": 3, "lo')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a metrics row"):
        m.truncate_after(5)


def test_stop_request_installed_before_start_up_is_idempotent_and_restores() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    stop = StopRequest().install().install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)  # e.g. Slurm's warning while the process group is still starting
        assert stop.received == "SIGUSR1"
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_a_failed_collective_becomes_one_line_naming_the_rank() -> None:
    import torch.distributed as dist

    from lcrecipes.launch.env import DistEnvError
    from lcrecipes.train.run import peer_lost

    gloo = RuntimeError("[/src/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:22225. This "
                        "is typically caused by a remote worker crashing. GLHF!")  # fmt: skip
    err = peer_lost(gloo, rank=0, world_size=2)
    assert isinstance(err, DistEnvError) and "\n" not in str(err)
    assert str(err) == ("rank 0 of 2: a peer rank died, hung or closed its connection during a collective; exiting "
                        "(RuntimeError: Connection closed by peer [127.0.0.1]:22225)")  # fmt: skip
    assert "Timed out" in str(peer_lost(dist.DistBackendError("Timed out waiting 20000ms for recv"), 1, 2))
    assert peer_lost(gloo, rank=0, world_size=1) is None  # a single process has no peer
    assert peer_lost(RuntimeError("CUDA out of memory"), rank=0, world_size=2) is None


def test_a_missing_or_truncated_shard_file_is_named_on_open(tmp_path: Path) -> None:
    from lcrecipes.data.shards import FILES, ShardDataset, ShardError
    from lcrecipes.train.synthetic import write_synthetic_shards

    write_synthetic_shards(tmp_path, seq_len=32, n_train=5, n_eval=2, vocab_size=40)
    shard = tmp_path / "train" / "shard_00000"
    for name in FILES:
        data = (shard / name).read_bytes()
        (shard / name).write_bytes(data + b"\0" * 8)  # too long is as wrong as too short
        with pytest.raises(ShardError, match=f"{shard / name}: {len(data) + 8} bytes, expected {len(data)}"):
            ShardDataset(tmp_path / "train")
        (shard / name).unlink()
        with pytest.raises(ShardError, match=f"{shard / name}: missing"):
            ShardDataset(tmp_path / "train")
        (shard / name).write_bytes(data)
    assert len(ShardDataset(tmp_path / "train", verify=True)) == 5


def test_console_line_without_a_known_peak_shows_achieved_tflops() -> None:
    from lcrecipes.train.metrics import format_row

    row = {"kind": "train", "step": 1, "steps": 3, "loss": 2.5, "grad_norm": 1.0, "lr": 1e-3, "tokens_per_s": 10.0,
           "mfu": 0.0, "tflops": 0.0123, "peak_mem_gib": 1.5, "step_s": 0.1}
    assert "| mfu n/a (0.0123 TFLOP/s) |" in format_row(row)
    assert "| mfu 25.0% |" in format_row({**row, "mfu": 0.25})
