"""The distributed environment of one rank: read from torchrun or Slurm variables, then the process group.

    env = detect_env()                      # torchrun: RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT
                                            # srun:     SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, master = first
                                            #           host of SLURM_JOB_NODELIST (port from SLURM_JOB_ID)
                                            # neither:  a single process (rank 0 of 1) on 127.0.0.1
    init_distributed(env, timeout_s=1800, expected_world_size=recipe.cfg.launch.world_size)

gloo on CPU, NCCL on GPU. ``PREEMPTED_EXIT_CODE`` is what a rank returns after saving on SIGUSR1/SIGTERM;
``slurm/train_1m.sh`` requeues the job on it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: a checkpoint was saved on a signal; requeue and resume
_TORCHRUN_KEYS = ("RANK", "WORLD_SIZE")
_SLURM_KEYS = ("SLURM_PROCID", "SLURM_NTASKS")


class DistEnvError(RuntimeError):
    """The launch environment is inconsistent (names the variable or the recipe key to fix)."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global ``rank`` of ``world_size``, ``local_rank`` on its node, rendezvous."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # torchrun | slurm | single

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def export(self) -> None:
        """Set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT for libraries that read them (DeepSpeed)."""
        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK=str(self.local_rank),
                          MASTER_ADDR=self.master_addr, MASTER_PORT=str(self.master_port))


def _int(environ: Mapping[str, str], key: str) -> int:
    try:
        return int(environ[key])
    except ValueError:
        raise DistEnvError(f"environment variable {key}={environ[key]!r} is not an integer") from None


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``gpu[07-09,12],cpu1`` -> ``gpu07``; ``a,b`` -> ``a``."""
    nodelist = nodelist.strip()
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not m or not m.group(1):
        raise DistEnvError(f"cannot read a host from SLURM_JOB_NODELIST={nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _from_torchrun(environ: Mapping[str, str]) -> DistEnv:
    return DistEnv(rank=_int(environ, "RANK"), world_size=_int(environ, "WORLD_SIZE"),
                   local_rank=_int(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else 0,
                   master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
                   master_port=_int(environ, "MASTER_PORT") if "MASTER_PORT" in environ else 29500,
                   source="torchrun")


def _from_slurm(environ: Mapping[str, str]) -> DistEnv:
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or socket.gethostname()
    addr = environ.get("MASTER_ADDR") or first_host(nodelist)
    if "MASTER_PORT" in environ:
        port = _int(environ, "MASTER_PORT")
    else:
        port = 20000 + _int(environ, "SLURM_JOB_ID") % 20000 if "SLURM_JOB_ID" in environ else 29500
    return DistEnv(rank=_int(environ, "SLURM_PROCID"), world_size=_int(environ, "SLURM_NTASKS"),
                   local_rank=_int(environ, "SLURM_LOCALID") if "SLURM_LOCALID" in environ else 0,
                   master_addr=addr, master_port=port, source="slurm")


def detect_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """This rank's environment: torchrun variables win over Slurm's; neither means one local process."""
    environ = os.environ if environ is None else environ
    if all(k in environ for k in _TORCHRUN_KEYS):
        env = _from_torchrun(environ)
    elif all(k in environ for k in _SLURM_KEYS):
        env = _from_slurm(environ)
    else:
        port = _int(environ, "MASTER_PORT") if "MASTER_PORT" in environ else _free_port()
        env = DistEnv(0, 1, 0, environ.get("MASTER_ADDR", "127.0.0.1"), port, "single")
    if not 0 <= env.rank < env.world_size:
        raise DistEnvError(f"rank {env.rank} is outside [0, world size {env.world_size}) ({env.source} variables)")
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_world_size(env: DistEnv, expected: int) -> None:
    """Fail clearly when the launcher started a different number of ranks than the recipe asks for."""
    if env.world_size != expected:
        who = {"single": "one process (no torchrun or Slurm variables)"}.get(env.source, env.source)
        raise DistEnvError(
            f"{who} started {env.world_size} rank(s) but the recipe asks for launch.nodes x "
            f"launch.gpus_per_node = {expected}; launch {expected} ranks (e.g. torchrun --nproc_per_node "
            f"{expected}) or override launch.gpus_per_node (and parallel.cp) to match")


def device_for(env: DistEnv) -> torch.device:
    """``cuda:<local_rank>`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(env: DistEnv, timeout_s: int, expected_world_size: int | None = None) -> str:
    """Check the world size, export the variables, set the device and start the default process group
    (gloo on CPU, NCCL on GPU) with a collective timeout of ``timeout_s`` seconds. Returns the backend name.
    Idempotent: an already initialised group is kept."""
    if expected_world_size is not None:
        check_world_size(env, expected_world_size)
    env.export()
    device = device_for(env)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return dist.get_backend()
    log.debug("init %s rank %d/%d via %s:%d", backend, env.rank, env.world_size, env.master_addr, env.master_port)
    # env:// reads the exported variables; under torchrun it joins the agent's store instead of opening a port
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size, timeout=timedelta(seconds=timeout_s),
                            init_method="env://")
    return backend


def set_cpu_threads(n: int) -> None:
    """Intra-op threads per rank (OMP_NUM_THREADS for libraries started later, and torch's own pool)."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
