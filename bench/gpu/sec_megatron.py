"""``megatron_te``: one Megatron-Core ``GPTModel`` step with the Transformer Engine layer spec, on one GPU.

The model comes from ``lcrecipes.models.megatron.build_gpt_model(spec, None, bf16, kind="te")`` (the Llama-3.2-1B
shape cut to a few layers), inside a one-rank NCCL process group with Megatron's model-parallel state at
TP = PP = CP = 1. Two steps (forward + backward + AdamW) on one packed sequence: plain causal attention over the
whole sequence, then THD packed documents (``PackedSeqParams``, TE's varlen attention). Checked: the loss of a
random-initialised model is finite and near ln(vocab); reported: the loss, step time, tokens/s, MFU, peak memory.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bench.gpu.common import (
    Context,
    Section,
    Skipped,
    fmt_num,
    init_single_rank,
    peak_bytes,
    register,
    require_cuda,
    require_module,
    reset_peak,
    timed,
)
from bench.gpu.lm_step import random_batch
from bench.gpu.specs import get_spec
from lcrecipes.models import mfu, training_flops


def load_builder():
    """``build_gpt_model`` from lcrecipes, or Skipped naming what is missing."""
    require_module("transformer_engine.pytorch")
    require_module("megatron.core")
    module = require_module("lcrecipes.models.megatron")
    if not hasattr(module, "build_gpt_model"):
        raise Skipped("lcrecipes.models.megatron has no build_gpt_model yet")
    return module.build_gpt_model


def megatron_step(model, optimizer, batch: dict, packed: bool) -> float:
    from megatron.core.packed_seq_params import PackedSeqParams

    params = None
    if packed:
        cu = torch.tensor([0, *batch["doc_lens"]], device=batch["input_ids"].device).cumsum(0).to(torch.int32)
        m = max(batch["doc_lens"])
        params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=m, max_seqlen_kv=m)
    labels = batch["labels"].clamp_min(0)
    mask = (batch["labels"] >= 0).float()
    losses = model(batch["input_ids"], batch["position_ids"], None, labels=labels, packed_seq_params=params)
    loss = (losses.float() * mask).sum() / mask.sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def run_case(ctx: Context, model, optimizer, spec, packed: bool) -> dict[str, Any]:
    doc_lens = ctx.plan.megatron.doc_lens
    n = sum(doc_lens)
    batch = random_batch(n, spec.vocab_size, doc_lens if packed else None, ctx.device)
    megatron_step(model, optimizer, batch, packed)  # warm-up
    reset_peak(ctx.device)
    loss, seconds = timed(lambda: megatron_step(model, optimizer, batch, packed), ctx.device)
    flops = training_flops(spec, batch["doc_lens"])
    return {
        "tokens": n,
        "doc_lens": batch["doc_lens"],
        "loss": loss,
        "ln_vocab": math.log(spec.vocab_size),
        "loss_ok": math.isfinite(loss) and abs(loss - math.log(spec.vocab_size)) < 1.5,
        "seconds": seconds,
        "tokens_per_s": n / seconds,
        "mfu": mfu(flops, seconds, 1, ctx.peak_tflops),
        **peak_bytes(ctx.device),
    }


@register
class MegatronTESection(Section):
    name = "megatron_te"

    def run(self, ctx: Context) -> dict[str, Any]:
        require_cuda(ctx)
        build_gpt_model = load_builder()
        from megatron.core import parallel_state
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        spec = get_spec(ctx.plan.megatron.spec, num_layers=ctx.plan.megatron.layers)
        init_single_rank("nccl")
        parallel_state.initialize_model_parallel(1, 1)
        try:
            model_parallel_cuda_manual_seed(0)
            model = build_gpt_model(spec, None, torch.bfloat16, kind="te").cuda()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
            result: dict[str, Any] = {"spec": ctx.plan.megatron.spec, "layers": spec.num_layers}
            for case, packed in (("causal", False), ("thd_packed", True)):
                result[case] = run_case(ctx, model, optimizer, spec, packed)
                ctx.emit(result)
            return result
        finally:
            parallel_state.destroy_model_parallel()
            torch.distributed.destroy_process_group()

    def summary(self, result: dict[str, Any]) -> list[tuple[str, str]]:
        rows = []
        for case in ("causal", "thd_packed"):
            r = result.get(case)
            if isinstance(r, dict):
                rows.append(
                    (
                        case,
                        f"loss {r['loss']:.3f} (ln V {r['ln_vocab']:.3f}, {'ok' if r['loss_ok'] else 'BAD'})"
                        f"  {fmt_num(r['tokens_per_s'])} tok/s  MFU {100 * r['mfu']:.1f}%",
                    )
                )
        return rows
