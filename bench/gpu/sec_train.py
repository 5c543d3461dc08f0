"""``train_step``: one training step (forward + backward + optimizer) of random-initialised Llama shapes.

Setup per model: HF ``LlamaForCausalLM`` in the plan's dtype (bf16 on the GPU) on one device, activation
checkpointing of every decoder layer (non-reentrant), output layer + loss in checkpointed chunks (``lm_step``),
``torch.optim.AdamW`` (fused on CUDA; its states in the parameters' dtype). One sequence of T tokens holding one
document (the costliest layout for attention). One untimed warm-up step at a short length first.

Reported per length: seconds, tokens/s, model TFLOP/s and MFU with the trainer's formula
(``lcrecipes.models.flops``: ``6 N T + 6 L d sum(S_doc^2)``, recomputation not counted), peak allocated and
reserved memory. An out-of-memory step is recorded as such and longer lengths of that model are skipped.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.gpu.common import (
    Context,
    Section,
    fmt_num,
    fmt_tokens,
    free_memory,
    gib,
    guarded,
    peak_bytes,
    register,
    require_cuda,
    reset_peak,
    skip_text,
    timed,
)
from bench.gpu.lm_step import build_llama, chunked_loss, hf_attention, random_batch
from bench.gpu.specs import get_spec
from lcrecipes.models import ModelSpec, mfu, training_flops


def make_optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, fused=device.type == "cuda")


def train_step(model, optimizer, batch: dict, chunk: int) -> float:
    """Forward + backward + optimizer step; returns the loss (nats/token)."""
    loss = chunked_loss(model, batch, chunk)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def measure_length(ctx: Context, model, optimizer, spec: ModelSpec, n_tokens: int) -> dict[str, Any]:
    batch = random_batch(n_tokens, spec.vocab_size, None, ctx.device, seed=n_tokens)
    reset_peak(ctx.device)
    loss, seconds = timed(lambda: train_step(model, optimizer, batch, ctx.plan.train.loss_chunk), ctx.device)
    flops = training_flops(spec, batch["doc_lens"])
    return {
        "tokens": n_tokens,
        "doc_lens": batch["doc_lens"],
        "seconds": seconds,
        "loss": loss,
        "tokens_per_s": n_tokens / seconds,
        "model_flops": flops,
        "tflops_per_s": flops / seconds / 1e12,
        "mfu": mfu(flops, seconds, 1, ctx.peak_tflops),
        **peak_bytes(ctx.device),
    }


def predicted_seconds(ctx: Context, spec: ModelSpec, n_tokens: int) -> float:
    """A pessimistic step time (recomputation adds ~1/3) at the plan's assumed MFU; 0 when the peak is unknown."""
    if ctx.peak_tflops <= 0:
        return 0.0
    rate = ctx.peak_tflops * 1e12 * ctx.plan.train.assumed_mfu
    return 4 / 3 * training_flops(spec, [n_tokens]) / rate


def run_lengths(ctx: Context, model, optimizer, spec: ModelSpec, rows: dict[str, Any], publish) -> None:
    """Fill ``rows`` (length -> result or skip text) in place, calling ``publish()`` after each length."""
    blocked = None
    for n in ctx.plan.train.lengths:
        need = predicted_seconds(ctx, spec, n)
        if blocked:
            rows[str(n)] = skip_text(blocked)
        elif need > ctx.time_left():
            rows[str(n)] = skip_text(f"section time budget (~{need:.0f} s needed, {ctx.time_left():.0f} s left)")
        else:
            rows[str(n)] = _try_length(ctx, model, optimizer, spec, n)
            if rows[str(n)].get("status") == "oom":
                blocked = f"out of memory at {fmt_tokens(n)} tokens"
        publish()


def _try_length(ctx: Context, model, optimizer, spec: ModelSpec, n: int) -> dict[str, Any]:
    oom = None
    try:
        return {"status": "ok", **measure_length(ctx, model, optimizer, spec, n)}
    except torch.OutOfMemoryError as err:
        oom = str(err).splitlines()[0][:300]
    optimizer.zero_grad(set_to_none=True)
    peaks = peak_bytes(ctx.device)
    free_memory(ctx.device)
    return {"status": "oom", "tokens": n, "error": oom, **peaks}


@register
class TrainStepSection(Section):
    name = "train_step"

    def run(self, ctx: Context) -> dict[str, Any]:
        if not ctx.plan.allow_cpu:
            require_cuda(ctx)
        attn = hf_attention(ctx.device)
        result: dict[str, Any] = {
            "attn_implementation": attn, "dtype": ctx.plan.dtype, "peak_tflops": ctx.peak_tflops,
            "activation_checkpointing": "every decoder layer (non-reentrant)", "optimizer": "torch AdamW",
            "loss": f"output layer + CE in checkpointed chunks of {ctx.plan.train.loss_chunk} tokens",
            "models": {},
        }  # fmt: skip
        for label, spec_name in ctx.plan.train.models.items():
            spec = get_spec(spec_name)
            entry = {
                "spec": spec_name,
                "params": spec.num_params(),
                "matmul_params": spec.matmul_params(),
                "lengths": {},
            }
            result["models"][label] = entry
            failed = guarded(lambda s=spec, e=entry: self._model(ctx, s, attn, e["lengths"], lambda: ctx.emit(result)))
            if failed:  # building or warming up this model failed (e.g. out of memory): keep the other model
                entry.update(failed)
            ctx.emit(result)
        return result

    def _model(self, ctx: Context, spec: ModelSpec, attn: str, rows: dict[str, Any], publish) -> None:
        dtype = getattr(torch, ctx.plan.dtype)
        model = build_llama(spec, ctx.device, dtype, attn)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        optimizer = make_optimizer(model, ctx.device)
        warm = random_batch(ctx.plan.train.warmup_tokens, spec.vocab_size, None, ctx.device)
        train_step(model, optimizer, warm, ctx.plan.train.loss_chunk)
        try:
            run_lengths(ctx, model, optimizer, spec, rows, publish)
        finally:
            del model, optimizer
            free_memory(ctx.device)

    def summary(self, result: dict[str, Any]) -> list[tuple[str, str]]:
        rows = []
        for label, entry in result.get("models", {}).items():
            if "error" in entry:
                rows.append((f"{label}", f"ERROR {entry['error'][:90]}"))
            for n, r in entry.get("lengths", {}).items():
                case = f"{label} @ {fmt_tokens(int(n))}"
                if not isinstance(r, dict):
                    rows.append((case, str(r)))
                elif r.get("status") == "oom":
                    rows.append((case, f"OOM (peak {gib(r.get('peak_alloc_bytes'))})"))
                else:
                    mem = r.get("peak_alloc_bytes", r.get("peak_rss_bytes"))
                    rows.append(
                        (
                            case,
                            f"{r['seconds']:.2f} s  {fmt_num(r['tokens_per_s'])} tok/s  "
                            f"MFU {100 * r['mfu']:.1f}%  peak {gib(mem)}",
                        )
                    )
        return rows
