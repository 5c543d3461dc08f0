"""The rank mesh of a training run: tensor parallel (TP, megatron only) innermost, then context parallel (CP), data
parallel (DP) and pipeline stages (PP, megatron only) outermost, Megatron's ``tp-cp-ep-dp-pp`` order:
global rank ``r = tp_rank + tp * (cp_rank + cp * (dp_rank + dp * pp_rank))`` (``r = dp_rank * cp + cp_rank`` when
``tp = pp = 1``, the deepspeed layout).

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
    tp: int = 1
    tp_rank: int = 0
    pp: int = 1
    pp_rank: int = 0
    data_group: dist.ProcessGroup | None = None  # DP x CP ranks of this (tp_rank, pp_rank); None: all ranks

    @property
    def replicas(self) -> int:
        """Ranks that hold the same micro-batches (TP x PP): global sums of data go over ``data_group``."""
        return self.tp * self.pp

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _rank_of(t: int, c: int, d: int, p: int, sizes: tuple[int, int, int, int]) -> int:
    tp, cp, dp, _ = sizes
    return t + tp * (c + cp * (d + dp * p))


def _group_of(rank: int, sizes: tuple[int, int, int, int], vary: tuple[int, ...],
              single: bool = False) -> dist.ProcessGroup | None:
    """Create every group whose ranks differ only in the axes ``vary`` (0 tp, 1 cp, 2 dp, 3 pp; collective, same
    order on all ranks); return this rank's (None when it has one rank, unless ``single``)."""
    import itertools

    fixed = [a for a in range(4) if a not in vary]
    mine = None
    for key in itertools.product(*(range(sizes[a]) for a in fixed)):
        ranks = []
        for free in itertools.product(*(range(sizes[a]) for a in vary)):
            coord = [0] * 4
            for a, v in zip(fixed, key):
                coord[a] = v
            for a, v in zip(vary, free):
                coord[a] = v
            ranks.append(_rank_of(*coord, sizes))
        g = dist.new_group(sorted(ranks)) if len(ranks) > 1 or single else None
        if rank in ranks:
            mine = g
    return mine


def build_mesh(cp: int, tp: int = 1, pp: int = 1) -> Mesh:
    """The mesh for context-parallel size ``cp`` (and, for megatron, ``tp``/``pp``) over the default process
    group (or one process without it)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if min(cp, tp, pp) < 1 or world % (cp * tp * pp):
        raise ValueError(f"parallel.tp*cp*pp={tp}*{cp}*{pp} does not divide the world size {world}")
    sizes = (tp, cp, world // (cp * tp * pp), pp)
    groups = [None, None, None]
    if world > 1:
        groups = [_group_of(rank, sizes, (1,)), _group_of(rank, sizes, (2,)), None]
        if tp * pp > 1:  # else the data group is every rank (None); a one-rank data group is a real group here
            groups[2] = _group_of(rank, sizes, (1, 2), single=True)
    return Mesh(rank=rank, world_size=world, cp=cp, cp_rank=rank // tp % cp, dp=sizes[2],
                dp_rank=rank // (tp * cp) % sizes[2], cp_group=groups[0], dp_group=groups[1], tp=tp,
                tp_rank=rank % tp, pp=pp, pp_rank=rank // (tp * cp * sizes[2]), data_group=groups[2])
