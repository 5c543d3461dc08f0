"""Run a function on N real torch.distributed ranks (gloo on CPU by default) from a test.

    from tests.distributed._spawn import run_distributed

    def _worker(rank, world_size, n):      # module level, so the spawned processes can import it
        ...                                # the default process group is already initialised
        return something_picklable

    results = run_distributed(_worker, 2, 3)   # [rank 0's return value, rank 1's, ...]

A rank that raises makes ``run_distributed`` raise ``RuntimeError`` in the parent with that rank's traceback; a
run longer than ``timeout`` seconds kills all ranks and raises ``TimeoutError`` (``timeout`` is also the process
group's collective timeout). Each rank runs with ``torch.set_num_threads(threads)`` (default 1), with
``HF_HUB_OFFLINE=1`` and the torchrun variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set.
"""

from __future__ import annotations

import os
import queue
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

DEFAULT_TIMEOUT_S = 180.0


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank, world_size, port, backend, threads, timeout, args, results) -> None:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HF_HUB_OFFLINE="1")
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout))
        value = fn(rank, world_size, *args)
        results.put((rank, "ok", value))
    except BaseException:  # report everything, including KeyboardInterrupt/SystemExit in the rank
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _collect(procs, results, world_size: int, deadline: float, name: str) -> dict[int, tuple[str, Any]]:
    """Gather one message per rank; stop at the first error (other ranks may then hang in a collective)."""
    got: dict[int, tuple[str, Any]] = {}
    while len(got) < world_size:
        try:
            rank, status, value = results.get(timeout=1.0)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: ranks {sorted(set(range(world_size)) - set(got))} still running") from None
            dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in got]
            if dead:
                got[dead[0]] = ("error", f"rank {dead[0]} died with exit code {procs[dead[0]].exitcode}")
                break
            continue
        got[rank] = (status, value)
        if status == "error":
            break
    return got


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str = "gloo",
    timeout: float = DEFAULT_TIMEOUT_S,
    threads: int = 1,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes that share an initialised default
    process group; return the ranks' return values in rank order. ``fn`` and ``args`` must be picklable."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        # not daemonic: ranks may start processes of their own (e.g. Megatron's dist_checkpointing)
        ctx.Process(target=_entry, args=(fn, r, world_size, port, backend, threads, timeout, args, results))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    name = getattr(fn, "__qualname__", repr(fn))
    got: dict[int, tuple[str, Any]] = {}
    try:
        got = _collect(procs, results, world_size, time.monotonic() + timeout, name)
    finally:
        _stop(procs, grace_s=10.0 if len(got) == world_size else 2.0)
    errors = {r: v for r, (s, v) in got.items() if s == "error"}
    if errors:
        rank = min(errors)
        raise RuntimeError(f"{name} failed on rank {rank} of {world_size}:\n{errors[rank]}")
    return [got[r][1] for r in range(world_size)]


def _stop(procs, grace_s: float) -> None:
    """Join the ranks for ``grace_s`` seconds, then terminate the ones still running (e.g. stuck after a peer
    failed)."""
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(timeout=5.0)
        if p.is_alive():
            p.kill()
            p.join()
