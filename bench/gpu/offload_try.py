"""One try of the ZeRO-3 offload probe: can one training step at T tokens run? Own process per try on the GPU.

    python -m bench.gpu.offload_try REQUEST.json RESULT.json

Request keys: ``spec`` (name), ``layers``, ``tokens``, ``doc_len``, ``loss_chunk``, ``dtype``, ``device``.
DeepSpeed ZeRO-3 on one rank with ``offload_param`` and ``offload_optimizer`` to CPU (pinned on CUDA), the model
built under ``deepspeed.zero.Init`` (parameters partitioned to CPU as they are created), activation
checkpointing, chunked loss, documents of ``doc_len`` tokens through a varlen attention kernel (flash-attn,
torch's ``varlen_attn``, else torch SDPA per document: memory linear in T with each). Optimizer: torch SGD
(stateless) on the CPU partitions. Adam's fp32 states for 8B parameters (64 GB) on top of the fp32 master weights
and gradients (64 GB) exceed the lent machine's 128 GiB of host memory; the GPU memory, which decides the longest
length, does not depend on the optimizer.
Result: ``status`` ("ok" or "oom"), ``seconds``, ``loss``, ``peak_alloc_bytes`` (CUDA), ``attention``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch

from bench.gpu.common import free_memory, init_single_rank, peak_bytes, reset_peak, sync
from bench.gpu.lm_step import (
    VARLEN_ATTN,
    build_llama,
    chunked_loss,
    random_batch,
    register_varlen_attention,
    split_docs,
    varlen_forward_kwargs,
)
from bench.gpu.specs import get_spec


def ds_config(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    pin = device.type == "cuda"
    return {
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu", "pin_memory": pin},
                              "offload_optimizer": {"device": "cpu", "pin_memory": pin}},
        "bf16": {"enabled": dtype == torch.bfloat16}, "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False, "steps_per_print": 2**31 - 1, "wall_clock_breakdown": False,
    }  # fmt: skip


def init_deepspeed(device: torch.device):
    """Import DeepSpeed and start its one-rank process group (NCCL on CUDA, gloo on CPU). On CPU its
    shared-memory all-reduce extension (a JIT build of a minute or more, useless on one rank) is turned off."""
    import deepspeed
    import deepspeed.ops

    if device.type == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    init_single_rank("nccl" if device.type == "cuda" else "gloo")
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    return deepspeed


def build_engine(req: dict, device: torch.device, dtype: torch.dtype, attn: str):
    deepspeed = init_deepspeed(device)
    spec = get_spec(req["spec"], num_layers=req["layers"], max_position_embeddings=max(req["tokens"], 4096))
    config = ds_config(device, dtype)
    with deepspeed.zero.Init(config_dict_or_path=config, dtype=dtype):
        model = build_llama(spec, device, dtype, attn)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine, spec


def step(engine, batch: dict, chunk: int, kwargs: dict) -> float:
    loss = chunked_loss(engine.module, batch, chunk, **kwargs)
    engine.backward(loss)
    engine.step()
    return float(loss.detach())


def run_try(req: dict) -> dict[str, Any]:
    """One probe try (see the module docstring); out-of-memory is a result, other errors propagate."""
    device, dtype = torch.device(req["device"]), getattr(torch, req["dtype"])
    kernel = register_varlen_attention(device)
    engine, spec = build_engine(req, device, dtype, VARLEN_ATTN)
    batch = random_batch(req["tokens"], spec.vocab_size, split_docs(req["tokens"], req["doc_len"]), device)
    kwargs = varlen_forward_kwargs(batch["doc_lens"], device)
    reset_peak(device)
    start = time.perf_counter()
    out: dict[str, Any] = {
        "tokens": req["tokens"],
        "layers": req["layers"],
        "attention": kernel or "sdpa",
        "docs": len(batch["doc_lens"]),
    }
    try:
        out.update(status="ok", loss=step(engine, batch, req["loss_chunk"], kwargs))
    except torch.OutOfMemoryError as err:
        out.update(status="oom", error=str(err).splitlines()[0][:300])
    sync(device)
    out.update(seconds=time.perf_counter() - start, **peak_bytes(device))
    del engine
    free_memory(device)
    return out


def main(argv: list[str]) -> int:
    request, result = argv
    with open(request) as f:
        req = json.load(f)
    out = run_try(req)
    with open(result, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
