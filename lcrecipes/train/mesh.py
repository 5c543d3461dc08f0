"""The rank mesh of a training run: context parallel (CP) groups of consecutive ranks, data parallel (DP) over the
rest. Global rank ``r = dp_rank * cp + cp_rank`` (CP innermost, as Megatron orders it after TP).

Every rank must build the mesh (``torch.distributed.new_group`` is collective, called in the same order).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class Mesh:
    """This rank's place in the ``dp x cp`` grid and its process groups (None when the group is one rank)."""

    rank: int
    world_size: int
    cp: int
    cp_rank: int
    dp: int
    dp_rank: int
    cp_group: dist.ProcessGroup | None
    dp_group: dist.ProcessGroup | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _groups(world: int, cp: int, rank: int) -> tuple[dist.ProcessGroup | None, dist.ProcessGroup | None]:
    """Create every CP and DP group (collective); return this rank's two."""
    dp = world // cp
    cp_group = dp_group = None
    for d in range(dp):
        ranks = list(range(d * cp, (d + 1) * cp))
        g = dist.new_group(ranks) if cp > 1 else None
        if rank in ranks:
            cp_group = g
    for c in range(cp):
        ranks = list(range(c, world, cp))
        g = dist.new_group(ranks) if dp > 1 else None
        if rank in ranks:
            dp_group = g
    return cp_group, dp_group


def build_mesh(cp: int) -> Mesh:
    """The mesh for context-parallel size ``cp`` over the default process group (or one process without it)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if cp < 1 or world % cp:
        raise ValueError(f"parallel.cp={cp} does not divide the world size {world}")
    cp_group, dp_group = _groups(world, cp, rank) if world > 1 else (None, None)
    return Mesh(rank=rank, world_size=world, cp=cp, cp_rank=rank % cp, dp=world // cp, dp_rank=rank // cp,
                cp_group=cp_group, dp_group=dp_group)
