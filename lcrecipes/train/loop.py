"""The training loop, the same for every backend: data, LR schedule, loss normalisation, logging, eval,
checkpoints (state.json + ``latest``), resume and the graceful stop.

    lcr train recipes/tiny_cpu/pretrain_1.yaml                                  # one process
    torchrun --nproc_per_node 2 -m lcrecipes.cli train recipes/tiny_cpu/pretrain_1.yaml

Per optimizer step: every rank takes its ``grad_accum`` micro-batches, the target tokens are summed over all
ranks (DP x CP x accumulation), the backend backpropagates ``loss_sum / global_tokens`` and steps at the
scheduled LR; the logged loss is the global ``sum / tokens``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from lcrecipes.checkpoint import CheckpointError, CheckpointManager, TrainState
from lcrecipes.checkpoint.rng import restore_rng, seed_host_rngs
from lcrecipes.config import Recipe, save_resolved
from lcrecipes.launch.env import PREEMPTED_EXIT_CODE
from lcrecipes.models import mfu
from lcrecipes.train.backends import Backend, get_backend
from lcrecipes.train.batch import MicroBatch
from lcrecipes.train.data import TrainBatches, eval_batches, open_split
from lcrecipes.train.hf_model import attention_for, model_spec
from lcrecipes.train.loss import global_target_tokens, loss_weight, reduce_sums
from lcrecipes.train.mesh import Mesh
from lcrecipes.train.metrics import GiB, MetricsLogger, peak_memory_bytes, peak_tflops, step_flops
from lcrecipes.train.schedule import lr_at
from lcrecipes.train.signals import StopRequest

log = logging.getLogger("lcrecipes.train")


def _max_over_ranks(value: float) -> float:
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.cuda() if dist.get_backend() == "nccl" else t
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


class Trainer:
    """One run of a recipe on an initialised process group. ``run()`` returns the process exit code.

    ``stop``: the stop-signal handler the entry installed before start-up; without one, the trainer installs its
    own here (and removes it in :meth:`close`), so a signal during setup is a stop request, not a dead rank.
    """

    def __init__(self, recipe: Recipe, mesh: Mesh, device: torch.device, stop: StopRequest | None = None):
        self._own_stop = stop is None
        self.stop = (stop or StopRequest()).install()
        self.recipe, self.cfg, self.mesh, self.device = recipe, recipe.cfg, mesh, device
        self.run_dir = Path(self.cfg.run_dir)
        self.spec = model_spec(self.cfg)
        self.state = TrainState(config_hash=recipe.config_hash(), backend=self.cfg.parallel.backend,
                                world_size=mesh.world_size)
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", self.cfg.checkpoint.keep_last,
                                      self.cfg.checkpoint.verify)
        self.peak = peak_tflops(self.cfg.train.peak_tflops, device)
        self.last_saved = -1
        self.backend: Backend | None = None

    # ----- setup -------------------------------------------------------------------------------------------
    def setup(self) -> None:
        seed_host_rngs(self.cfg.train.seed, self.mesh.rank)
        path = str(self.recipe.path) if self.recipe.path else None
        self.batches = TrainBatches(open_split(self.cfg, "train", path), self.cfg, self.mesh)
        self.eval_ds = self._open_eval(path)
        if self.mesh.is_main:
            save_resolved(self.recipe, self.run_dir)
        self.metrics = MetricsLogger(self.run_dir, self.mesh.is_main, self.cfg.train.tensorboard)
        cls = get_backend(self.cfg.parallel.backend)
        self.backend = cls(self.recipe, self.mesh, self.device, attention_for(self.cfg))
        self.backend.setup()
        self.ckpt.clean_stale()
        self.resume()

    def _open_eval(self, path: str | None):
        try:
            return open_split(self.cfg, "eval", path)
        except FileNotFoundError as e:
            log.warning("no eval shards, eval skipped: %s", e)
            return None

    def resume(self) -> None:
        """Restore backend, sampler, RNG and step from the checkpoint ``checkpoint.resume`` selects."""
        ckpt = self.ckpt.resolve_resume(self.cfg.checkpoint.resume)
        if ckpt is None:
            self.metrics.truncate_after(0)  # rows of an attempt killed before its first checkpoint
            return
        state = self.ckpt.load_state(ckpt)
        if state.world_size != self.mesh.world_size or state.backend != self.cfg.parallel.backend:
            raise CheckpointError(f"{ckpt}: saved by {state.backend} on {state.world_size} ranks; this run is "
                                  f"{self.cfg.parallel.backend} on {self.mesh.world_size} ranks")
        if state.config_hash != self.state.config_hash:
            log.warning("%s: saved with config hash %s, this run's is %s (recipe changed since)", ckpt,
                        state.config_hash, self.state.config_hash)
        self.backend.load(ckpt)
        self.batches.load_state_dict(state.sampler)
        restore_rng(state.rng[self.mesh.rank])
        self.state = TrainState(step=state.step, tokens=state.tokens, config_hash=self.state.config_hash,
                                backend=state.backend, world_size=state.world_size, extra=state.extra)
        self.last_saved = state.step
        self.metrics.truncate_after(state.step)
        log.info("resumed from %s at step %d", ckpt, state.step)

    # ----- step, eval, save, log ---------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One optimizer step; returns its metrics row (global values)."""
        t0 = time.perf_counter()
        mbs = self.batches.next_step()
        tokens = global_target_tokens(mbs, self.mesh.data_group)
        lr = lr_at(self.state.step, self.cfg.train)
        res = self.backend.train_step(mbs, loss_weight(tokens), lr)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        self.state.step += 1
        self.state.tokens += tokens
        return self._train_row(mbs, res.loss_sum, tokens, res.grad_norm, lr, seconds)

    def _train_row(self, mbs: list[MicroBatch], loss_sum: float, tokens: int, grad_norm: float, lr: float,
                   seconds: float) -> dict:
        first = self.mesh.cp_rank == 0
        seq_tokens = sum(sum(mb.doc_lens) for mb in mbs) if first else 0
        loss_total, flops, seq_total = reduce_sums([loss_sum, step_flops(self.spec, mbs, first), seq_tokens],
                                                     self.mesh.data_group)
        return {"kind": "train", "step": self.state.step, "steps": self.cfg.train.steps,
                "loss": loss_total / max(tokens, 1), "target_tokens": tokens, "grad_norm": grad_norm, "lr": lr,
                "tokens_per_s": seq_total / seconds, "mfu": mfu(flops, seconds, self.mesh.world_size, self.peak),
                "tflops": flops / seconds / 1e12, "step_s": seconds, "tokens_seen": self.state.tokens}

    def log_step(self, row: dict) -> None:
        """Add the peak memory (max over ranks) and write the row (console on rank 0, JSONL, TensorBoard)."""
        row["peak_mem_gib"] = _max_over_ranks(peak_memory_bytes(self.device)) / GiB
        self.metrics.log(row)

    def evaluate(self) -> dict | None:
        """Loss on the held-out shards: global sum of target-token losses / global target tokens."""
        if self.eval_ds is None:
            return None
        batches = eval_batches(self.eval_ds, self.cfg.train.eval_batches, self.mesh)
        local = sum(self.backend.eval_loss(mb) for mb in batches)
        total, tokens = reduce_sums([local, float(sum(mb.target_tokens for mb in batches))], self.mesh.data_group)
        row = {"kind": "eval", "step": self.state.step, "loss": total / max(tokens, 1), "target_tokens": int(tokens)}
        self.state.extra["eval_loss"] = row["loss"]
        self.metrics.log(row)
        return row

    def save(self) -> Path:
        """Collective: checkpoint ``step_<N>`` (native state + state.json), then ``latest``."""
        self.state.sampler = self.batches.state_dict()
        path = self.ckpt.save(self.state, self.backend.save)
        self.last_saved = self.state.step
        return path

    # ----- the loop ----------------------------------------------------------------------------------------
    def _due(self, every: int) -> bool:
        return every > 0 and self.state.step % every == 0

    def run(self) -> int:
        """Train to ``train.steps``; 0 when done, ``PREEMPTED_EXIT_CODE`` after a save on a stop signal."""
        self.setup()
        t = self.cfg.train
        if self.state.step >= t.steps:
            log.info("already trained %d/%d steps; nothing to do", self.state.step, t.steps)
            return 0
        while self.state.step < t.steps:
            if self.stop.agreed():
                return self._stop()
            row = self.train_step()
            last = self.state.step == t.steps
            if self._due(t.log_every) or last:
                self.log_step(row)
            if self._due(t.eval_every) or last:
                self.evaluate()  # before the save: the final checkpoint's view includes its eval row
            if self._due(self.cfg.checkpoint.every) or last:
                self.save()
        return 0

    def _stop(self) -> int:
        if self.last_saved != self.state.step and self.state.step > 0:
            self.save()
        log.warning("stopped at step %d on a signal; exit code %d (requeue to resume)", self.state.step,
                    PREEMPTED_EXIT_CODE)
        return PREEMPTED_EXIT_CODE

    def close(self) -> None:
        if self._own_stop:
            self.stop.uninstall()
        if self.backend is not None:
            self.backend.close()
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
