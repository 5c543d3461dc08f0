"""Entry points: start this rank's process group from torchrun/Slurm variables and run the loop.

    torchrun --nproc_per_node 2 -m lcrecipes.cli train recipes/tiny_cpu/pretrain_1.yaml
"""

from __future__ import annotations

import logging
import re

import torch
import torch.distributed as dist

from lcrecipes.config import Recipe
from lcrecipes.launch.env import DistEnvError, detect_env, device_for, init_distributed, set_cpu_threads
from lcrecipes.train.mesh import Mesh, build_mesh
from lcrecipes.train.signals import StopRequest

log = logging.getLogger("lcrecipes.train")
# gloo reports a dead or hung peer as a plain RuntimeError from its transport; NCCL and the store raise DistError.
_GLOO_PEER = re.compile(r"gloo/transport|Connection (closed|reset) by peer|Timed out waiting")
_SOURCE_PREFIX = re.compile(r"^\[[^\]]*\]\s*")  # "[/path/pair.cc:553] "


class PeerLostError(DistEnvError):
    """A collective failed because another rank died, hung or closed its connection; this rank exits."""


def peer_lost(e: BaseException, rank: int, world_size: int) -> PeerLostError | None:
    """The one-line error for ``e`` when it is a failed collective of a multi-rank job, else None."""
    failed_collective = isinstance(e, dist.DistError) or isinstance(e, RuntimeError) and _GLOO_PEER.search(str(e))
    if world_size < 2 or not failed_collective:
        return None
    detail = _SOURCE_PREFIX.sub("", (str(e).strip().splitlines() or [""])[0]).split(". This is typically")[0]
    return PeerLostError(f"rank {rank} of {world_size}: a peer rank died, hung or closed its connection during a "
                         f"collective; exiting ({type(e).__name__}: {detail[:300]})")


def start_process(recipe: Recipe) -> tuple[Mesh, torch.device]:
    """Init the default process group (the world size must equal ``launch.nodes x launch.gpus_per_node``), set
    CPU threads per rank, quiet the logs of ranks other than 0, and build the DP x CP mesh."""
    cfg = recipe.cfg
    env = detect_env()
    init_distributed(env, cfg.parallel.timeout_s, expected_world_size=cfg.launch.world_size)
    device = device_for(env)
    if device.type == "cpu":
        set_cpu_threads(cfg.train.num_threads)
    if env.rank != 0:
        logging.getLogger("lcrecipes").setLevel(logging.WARNING)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return build_mesh(cfg.parallel.cp, cfg.parallel.tp, cfg.parallel.pp), device


def _add_log_file(recipe: Recipe, mesh: Mesh) -> None:
    from pathlib import Path

    if mesh.is_main:
        path = Path(recipe.cfg.run_dir) / "logs" / "train.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("lcrecipes").addHandler(handler)


def train(recipe: Recipe) -> int:
    """Train ``recipe`` on this rank; returns 0, or ``PREEMPTED_EXIT_CODE`` after a save on a stop signal.
    The stop signals are handled from the first line on (a signal during start-up requests a stop); a failed
    collective because a peer died raises :class:`PeerLostError` (one line naming this rank)."""
    with StopRequest() as stop:
        mesh, device = start_process(recipe)
        _add_log_file(recipe, mesh)
        try:
            return _train(recipe, mesh, device, stop)
        except RuntimeError as e:
            lost = peer_lost(e, mesh.rank, mesh.world_size)
            if lost is None:
                raise
            log.debug("collective failed", exc_info=True)
            raise lost from None


def _train(recipe: Recipe, mesh: Mesh, device: torch.device, stop: StopRequest) -> int:
    from lcrecipes.train.loop import Trainer

    trainer = Trainer(recipe, mesh, device, stop=stop)
    try:
        code = trainer.run()
    finally:
        trainer.close()
    if dist.is_initialized():
        dist.barrier()  # every rank is done with the last checkpoint before any exits
    return code
