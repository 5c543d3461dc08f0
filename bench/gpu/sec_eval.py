"""``eval_compression``: prefill + greedy decode at long context, without and with KV-cache compression.

Model: a random-initialised Llama shape (Llama-3.1-8B on the GPU) in the plan's dtype, sdpa attention. Input:
random context tokens + a random question (the eval's query-aware mode: the question is prefilled with the
context and always kept). Methods come from ``lcrecipes.eval.compression`` (``get_method(name).generate``):
``none`` (full cache), ``snapkv`` (a kvpress press: drops entries, frees memory) and ``topk_retrieval`` (the study's
RetrievalAttention setting: full cache kept, decode attends to the top-k context keys), all at the same budget
(fraction of context KV kept). Reported per method: prefill seconds (context + question + compression, until the
first token's logits), decode seconds and ms per new token, KV bytes full and kept, peak memory. Random weights:
timing and memory only, the generated text means nothing. One short untimed warm-up generation first.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.gpu.common import (
    Context,
    Section,
    fmt_tokens,
    free_memory,
    gib,
    guarded,
    register,
    require_cuda,
    require_module,
    skip_text,
)
from bench.gpu.lm_step import build_llama
from bench.gpu.specs import get_spec


def random_ids(n: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def generate(compression, model, name: str, context: list[int], question: list[int], ctx: Context) -> dict:
    s = ctx.plan.eval
    res = compression.get_method(name).generate(model, None, context, question, s.budget, s.mode, s.max_new_tokens)
    steps = max(len(res.output_ids) - 1, 1)
    return {
        "prefill_s": res.prefill_s,
        "decode_s": res.decode_s,
        "decode_ms_per_token": 1e3 * res.decode_s / steps,
        "new_tokens": len(res.output_ids),
        "context_tokens": res.n_context_tokens,
        "kv_bytes_full": res.kv_bytes_full,
        "kv_bytes_kept": res.kv_bytes_kept,
        "peak_bytes": res.peak_rss_bytes,
        "memory_claim_holds": compression.memory_claim_holds(compression.get_method(name), res, s.budget),
    }


def run_method(compression, model, name: str, ctx: Context, context: list[int], question: list[int]) -> Any:
    if name not in compression.METHODS:
        return skip_text(f"no compression method {name!r} in lcrecipes.eval.compression")
    if ctx.time_left() < 5:
        return skip_text("section time budget")
    try:
        return generate(compression, model, name, context, question, ctx)
    except torch.OutOfMemoryError as err:
        oom = str(err).splitlines()[0][:300]
    free_memory(ctx.device)
    return {"status": "oom", "error": oom}


@register
class EvalCompressionSection(Section):
    name = "eval_compression"

    def run(self, ctx: Context) -> dict[str, Any]:
        if not ctx.plan.allow_cpu:
            require_cuda(ctx)
        compression = require_module("lcrecipes.eval.compression")
        s = ctx.plan.eval
        spec = get_spec(s.spec, max_position_embeddings=max(s.context + s.question + s.max_new_tokens, 4096))
        model = build_llama(spec, ctx.device, getattr(torch, ctx.plan.dtype), "sdpa").eval()
        warm = random_ids(s.warmup_context, spec.vocab_size, 1)
        compression.get_method("none").generate(model, None, warm, warm[:8], 1.0, s.mode, 2)
        context = random_ids(s.context, spec.vocab_size, 2)
        question = random_ids(s.question, spec.vocab_size, 3)
        result: dict[str, Any] = {
            "spec": s.spec,
            "context_tokens": s.context,
            "question_tokens": s.question,
            "budget": s.budget,
            "mode": s.mode,
            "max_new_tokens": s.max_new_tokens,
            "methods": {},
        }
        for name in s.methods:
            result["methods"][name] = guarded(lambda n=name: run_method(compression, model, n, ctx, context, question))
            ctx.emit(result)
        return result

    def summary(self, result: dict[str, Any]) -> list[tuple[str, str]]:
        rows = []
        n = result.get("context_tokens", 0) + result.get("question_tokens", 0)
        for name, r in result.get("methods", {}).items():
            case = f"{name} @ {fmt_tokens(n)}"
            if not isinstance(r, dict) or "prefill_s" not in r:
                rows.append((case, str(r.get("error", r.get("status")) if isinstance(r, dict) else r)[:90]))
                continue
            rows.append(
                (
                    case,
                    f"prefill {r['prefill_s']:.2f} s  decode {r['decode_ms_per_token']:.1f} ms/tok  "
                    f"KV kept {gib(r['kv_bytes_kept'])} of {gib(r['kv_bytes_full'])}  "
                    f"peak {gib(r['peak_bytes'])}",
                )
            )
        return rows
