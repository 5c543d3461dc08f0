"""``attention``: packed-document causal attention, forward and backward, every implementation against one reference.

Reference: fp32 torch SDPA (math backend) run document by document (``is_causal=True``), on fp32 copies of the
same inputs.
Compared (inputs in the plan's dtype, bf16 on the GPU): our portable CP attention (every registered
implementation, single rank: ``cp_size = 1``, the zigzag layout then only pads each document to an even length),
torch SDPA per document in that dtype (the floor any bf16 kernel reaches), flash-attn's varlen kernel, torch's
``varlen_attn``, and Transformer Engine's ``DotProductAttention`` in THD format. For each: relative errors
(Frobenius) of the output and of dq, dk, dv for one random upstream gradient, and forward + backward time.
Context parallel with cp > 1 needs two GPUs (NCCL refuses two ranks on one device): recorded as skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.gpu.common import (
    Context,
    Section,
    Skipped,
    fmt_num,
    guarded,
    register,
    rel_err,
    require_cuda,
    require_module,
    skip_text,
    timed,
)
from bench.gpu.lm_step import flash_attn_kernel, per_doc_sdpa, torch_varlen_kernel

# fn(q [T, H, D], k, v [T, H_kv, D], cu int32 [n + 1], max_len) -> out [T, H, D]
AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def ours(impl: str) -> AttnFn:
    """Our CP attention ``impl`` on one rank, through the zigzag layout (shard -> attention -> unshard)."""
    from lcrecipes.parallel import get_attention, make_cp_meta, shard, unshard

    attention = get_attention(impl)

    def fn(q, k, v, cu, max_len):
        meta = make_cp_meta(cu, 1, 0, q.device)
        local = [shard(x, cu, 1, 0) for x in (q, k, v)]
        return unshard([attention(*local, meta, None, causal=True)], cu)

    return fn


def flash_attn_varlen() -> AttnFn:
    require_module("flash_attn")
    return flash_attn_kernel()


def torch_varlen() -> AttnFn:
    kernel = torch_varlen_kernel()
    if kernel is None:
        raise Skipped(f"torch.nn.attention.varlen.varlen_attn not in torch {torch.__version__}")
    return kernel


def transformer_engine() -> AttnFn:
    te = require_module("transformer_engine.pytorch")

    def fn(q, k, v, cu, max_len):
        t, h, d = q.shape
        attn = te.DotProductAttention(
            h, d, num_gqa_groups=k.shape[1], attention_dropout=0.0, qkv_format="thd", attn_mask_type="padding_causal"
        )
        out = attn(q, k, v, cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max_len, max_seqlen_kv=max_len)
        return out.view(t, h, d)

    return fn


def implementations(ctx: Context) -> dict[str, Callable[[], AttnFn]]:
    """Name -> factory; a factory raises Skipped when its implementation cannot run here."""
    from lcrecipes.parallel import available_attentions

    def gpu(factory):
        def cuda_only():
            require_cuda(ctx)
            return factory()

        return cuda_only

    impls: dict[str, Callable[[], AttnFn]] = {
        f"ours:{name}": (lambda n=name: ours(n)) for name in available_attentions()
    }
    impls["torch_sdpa"] = lambda: per_doc_sdpa
    impls["flash_attn_varlen"] = gpu(flash_attn_varlen)
    impls["torch_varlen_attn"] = gpu(torch_varlen)
    impls["transformer_engine"] = gpu(transformer_engine)
    return impls


def make_inputs(ctx: Context) -> dict[str, Any]:
    s = ctx.plan.attention
    gen = torch.Generator(device="cpu").manual_seed(0)
    t = sum(s.doc_lens)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(ctx.device)

    cu = torch.tensor([0, *s.doc_lens]).cumsum(0).to(torch.int32).to(ctx.device)
    return {
        "q": rnd(t, s.heads, s.head_dim),
        "k": rnd(t, s.kv_heads, s.head_dim),
        "v": rnd(t, s.kv_heads, s.head_dim),
        "dout": rnd(t, s.heads, s.head_dim),
        "cu": cu,
        "max_len": max(s.doc_lens),
    }


def forward_backward(fn: AttnFn, inp: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """out, dq, dk, dv of ``fn`` for inputs cast to ``dtype`` (leaves requiring grad)."""
    q, k, v = (inp[n].to(dtype, copy=True).requires_grad_() for n in ("q", "k", "v"))
    out = fn(q, k, v, inp["cu"], inp["max_len"])
    out.backward(inp["dout"].to(dtype))
    return {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}


def measure(factory: Callable[[], AttnFn], inp: dict, ref: dict, ctx: Context) -> dict[str, Any] | str:
    try:
        fn = factory()
    except Skipped as why:
        return skip_text(str(why))
    dtype = getattr(torch, ctx.plan.attention.dtype)
    forward_backward(fn, inp, dtype)  # warm-up (kernel selection, autotuning)
    got, seconds = timed(lambda: forward_backward(fn, inp, dtype), ctx.device)
    errs = {f"relerr_{n}": rel_err(got[n], ref[n]) for n in ("out", "dq", "dk", "dv")}
    return {**errs, "fwd_bwd_ms": seconds * 1e3, "ok": max(errs.values()) <= ctx.plan.attention.tol}


@register
class AttentionSection(Section):
    name = "attention"

    def run(self, ctx: Context) -> dict[str, Any]:
        if not ctx.plan.allow_cpu:
            require_cuda(ctx)
        s = ctx.plan.attention
        inp = make_inputs(ctx)
        with sdpa_kernel(SDPBackend.MATH):  # plain fp32 matmuls (no TF32 inside a fused kernel)
            ref = forward_backward(per_doc_sdpa, inp, torch.float32)
        result: dict[str, Any] = {
            "doc_lens": s.doc_lens,
            "heads": s.heads,
            "kv_heads": s.kv_heads,
            "head_dim": s.head_dim,
            "dtype": s.dtype,
            "tol": s.tol,
            "impls": {},
        }
        for name, factory in implementations(ctx).items():
            result["impls"][name] = guarded(lambda f=factory: measure(f, inp, ref, ctx))
            ctx.emit(result)
        result["cp2_te_and_ours"] = skip_text(
            "context parallel size 2 needs two GPUs (NCCL refuses two ranks "
            "on one device); covered on CPU by tests/distributed"
        )
        return result

    def summary(self, result: dict[str, Any]) -> list[tuple[str, str]]:
        rows = []
        for name, r in result.get("impls", {}).items():
            if not isinstance(r, dict):
                rows.append((name, str(r)[:90]))
                continue
            if "error" in r:
                rows.append((name, f"ERROR {r['error'][:80]}"))
                continue
            errs = "/".join(fmt_num(r[f"relerr_{n}"]) for n in ("out", "dq", "dk", "dv"))
            rows.append(
                (
                    name,
                    f"relerr out/dq/dk/dv {errs}  fwd+bwd {r['fwd_bwd_ms']:.1f} ms  {'ok' if r['ok'] else 'ABOVE TOL'}",
                )
            )
        return rows
