"""Training and eval batches from packed shards (``<data.out_dir>/train`` and ``/eval``).

Each DP rank draws its sequences from a deterministic :class:`~lcrecipes.data.sampler.DistributedSampler` over
the DP ranks (the CP ranks of one group read the same sequences and keep their zigzag share). One optimizer step
takes ``grad_accum`` micro-batches of ``micro_batch_size`` sequences per DP rank.
"""

from __future__ import annotations

from pathlib import Path

from lcrecipes.config import RecipeConfig
from lcrecipes.data.sampler import DistributedSampler
from lcrecipes.data.shards import ShardDataset
from lcrecipes.train.batch import MicroBatch, make_micro_batch
from lcrecipes.train.mesh import Mesh


class MissingDataError(FileNotFoundError):
    """The recipe's shards are absent; the message says which command writes them."""


def open_split(cfg: RecipeConfig, split: str, recipe_path: str | None = None) -> ShardDataset:
    """The ``split`` shards of the recipe's ``data.out_dir``, or a MissingDataError telling how to make them."""
    root = Path(cfg.data.out_dir) / split
    if not (root / "manifest.json").is_file():
        hint = f"lcr prepare {recipe_path}" if recipe_path else "lcr prepare RECIPE"
        raise MissingDataError(f"{root}: no packed {split} shards (data.out_dir={cfg.data.out_dir}); "
                               f"run `{hint}` first")
    ds = ShardDataset(root)
    if ds.seq_len != cfg.data.seq_len:
        raise MissingDataError(f"{root}: shards have seq_len {ds.seq_len}, the recipe data.seq_len="
                               f"{cfg.data.seq_len}; rerun `lcr prepare`")
    return ds


class TrainBatches:
    """``next_step()`` -> this rank's ``grad_accum`` micro-batches; ``state_dict()`` resumes the data exactly."""

    def __init__(self, ds: ShardDataset, cfg: RecipeConfig, mesh: Mesh, replicate: bool = False):
        self.ds, self.cfg, self.mesh, self.replicate = ds, cfg, mesh, replicate
        if len(ds) < mesh.dp:
            raise MissingDataError(f"{ds.root}: {len(ds)} sequences cannot feed {mesh.dp} data-parallel ranks")
        self.sampler = DistributedSampler(len(ds), rank=mesh.dp_rank, world_size=mesh.dp, seed=cfg.train.seed)
        self._it = iter(self.sampler)

    def _next_index(self) -> int:
        try:
            return next(self._it)
        except StopIteration:  # epoch done: the sampler moved to the next one
            self._it = iter(self.sampler)
            return next(self._it)

    def next_step(self) -> list[MicroBatch]:
        t = self.cfg.train
        out = []
        for _ in range(t.grad_accum):
            samples = [self.ds[self._next_index()] for _ in range(t.micro_batch_size)]
            out.append(make_micro_batch(samples, self.mesh.cp, self.mesh.cp_rank, replicate=self.replicate))
        return out

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self._it = iter(self.sampler)


def eval_batches(ds: ShardDataset, n_per_rank: int, mesh: Mesh) -> list[MicroBatch]:
    """The first ``n * dp`` eval sequences, round-robin over DP ranks (one sequence per micro-batch), with
    ``n = min(n_per_rank, len(ds) // dp)`` so that every rank runs the same number of (collective) forwards."""
    n = min(n_per_rank, len(ds) // mesh.dp)
    idx = range(mesh.dp_rank, n * mesh.dp, mesh.dp)
    return [make_micro_batch([ds[i]], mesh.cp, mesh.cp_rank) for i in idx]
