"""TEST FIXTURE: run Megatron-Core on CPU over gloo by redirecting its CUDA *placement* calls to the CPU.

Megatron-Core hard-codes ``device="cuda"``, ``torch.cuda.current_device()``, CUDA RNG states and stream/event calls
in many places. This module rewrites those calls to their CPU equivalents inside the current process; all maths
and all torch.distributed (gloo) communication still run for real. It is imported by tests only — never by the
``lcrecipes`` package.

    from tests.megatron_cpu import megatron_on_cpu
    with megatron_on_cpu(tp=2, pp=1):           # inside a rank started by run_ranks
        model = build_gpt_model(spec, ...)

``run_ranks`` starts *non-daemonic* gloo ranks: ``dist_checkpointing.save`` starts a helper process, which
daemonic processes may not do.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.multiprocessing as mp
from torch.overrides import TorchFunctionMode

_INSTALLED = False
_TYPE_AS_CUDA = False  # Tensor.type() of CPU tensors reads 'torch.cuda.*' (Megatron's optimizers assert on it)


def _is_cuda(device) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, int) and not isinstance(device, bool)  # a bare CUDA ordinal


class _CpuPlacement(TorchFunctionMode):
    """Every torch call: ``device='cuda…'`` -> ``'cpu'``, ``pin_memory=True`` -> False, ``t.cuda()`` -> ``t``;
    with ``_TYPE_AS_CUDA``, ``t.type()`` of a CPU tensor names the CUDA type (``torch.cuda.FloatTensor``)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and _TYPE_AS_CUDA and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if args[0].device.type == "cpu" else name
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


class _NoStream:
    """Stands in for ``torch.cuda.Stream`` and ``torch.cuda.Event``: CPU work is already ordered."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: True if name == "query" else None


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: torch.device("cpu")
    cuda.synchronize = lambda *a, **k: None
    cuda.Stream = cuda.Event = _NoStream
    cuda.current_stream = lambda *a, **k: _NoStream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.nvtx.range_push = lambda *a, **k: None
    cuda.nvtx.range_pop = lambda *a, **k: None
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    cuda.manual_seed = torch.manual_seed
    torch.Tensor.cuda = lambda self, *a, **k: self


def _patch_megatron_rng() -> None:
    import megatron.core.tensor_parallel.random as mrandom

    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)


def redirect_cuda_to_cpu(type_as_cuda: bool = False) -> None:
    """Install the redirection for the rest of this process (idempotent). Call it in spawned ranks only.
    ``type_as_cuda``: CPU tensors report CUDA type names (needed by Megatron's optimizers)."""
    global _INSTALLED, _TYPE_AS_CUDA
    _TYPE_AS_CUDA = _TYPE_AS_CUDA or type_as_cuda
    if _INSTALLED:
        return
    _INSTALLED = True
    _patch_torch_cuda()
    _patch_megatron_rng()
    _CpuPlacement().__enter__()  # stays active until the process exits


@contextlib.contextmanager
def megatron_on_cpu(tp: int = 1, pp: int = 1, seed: int = 1234) -> Iterator[None]:
    """Redirect CUDA to CPU, initialise Megatron's model-parallel groups (the default gloo group must exist),
    seed its RNG tracker, and tear the groups down afterwards."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    redirect_cuda_to_cpu()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    model_parallel_cuda_manual_seed(seed)
    try:
        yield
    finally:
        parallel_state.destroy_model_parallel()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_entry(rank: int, fn: Callable, world_size: int, port: int, args: tuple, results) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        # plain pickle bytes: torch's queue reductions would share tensor memory with a process about to exit
        results.put((rank, pickle.dumps(fn(rank, world_size, *args))))
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 240.0) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` non-daemonic gloo ranks; return their results in rank
    order. A rank's exception is re-raised here (with its traceback); a run over ``timeout_s`` is killed."""
    results = mp.get_context("spawn").Queue()
    procs = mp.start_processes(_rank_entry, args=(fn, world_size, _free_port(), args, results), nprocs=world_size,
                               join=False, daemon=False, start_method="spawn")
    deadline, got = time.monotonic() + timeout_s, {}
    try:
        while len(got) < world_size:  # read while the ranks run: a large result fills the pipe until read
            try:
                rank, payload = results.get(timeout=1.0)
                got[rank] = pickle.loads(payload)
                continue
            except queue.Empty:
                pass
            if procs.join(timeout=0) and len(got) < world_size:  # raises with the traceback of a failed rank
                raise RuntimeError(f"ranks {sorted(set(range(world_size)) - set(got))} exited without a result")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{getattr(fn, '__name__', fn)}: ranks still running after {timeout_s:.0f} s")
        while not procs.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{getattr(fn, '__name__', fn)}: ranks did not exit after {timeout_s:.0f} s")
    finally:
        for p in procs.processes:
            if p.is_alive():
                p.kill()
    return [got[r] for r in range(world_size)]
