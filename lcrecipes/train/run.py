"""Entry points: start this rank's process group from torchrun/Slurm variables and run the loop.

    torchrun --nproc_per_node 2 -m lcrecipes.cli train recipes/tiny_cpu/base.yaml
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from lcrecipes.config import Recipe
from lcrecipes.launch.env import detect_env, device_for, init_distributed, set_cpu_threads
from lcrecipes.train.mesh import Mesh, build_mesh

log = logging.getLogger("lcrecipes.train")


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
    """Train ``recipe`` on this rank; returns 0, or ``PREEMPTED_EXIT_CODE`` after a save on a stop signal."""
    from lcrecipes.train.loop import Trainer

    mesh, device = start_process(recipe)
    _add_log_file(recipe, mesh)
    trainer = Trainer(recipe, mesh, device)
    try:
        code = trainer.run()
    finally:
        trainer.close()
    if dist.is_initialized():
        dist.barrier()  # every rank is done with the last checkpoint before any exits
    return code
