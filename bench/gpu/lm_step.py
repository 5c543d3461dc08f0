"""HF Llama pieces shared by the training, offload and eval sections: build, batch, chunked loss, varlen attention.

The loss never materialises the full ``[T, vocab]`` logits: at 128K tokens and a 128256-token vocabulary they
would take 34 GB in bf16 (67 GB more in fp32 for the loss). The output layer and cross entropy run on chunks of
``chunk`` tokens under activation checkpointing, so only one chunk's logits live at a time. The output layer's
FLOPs are the same; its recomputation is not counted (as for every checkpointed layer).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lcrecipes.models import ModelSpec, hf_config_from_spec

IGNORE = -100
VARLEN_ATTN = "bench_varlen"


def build_llama(spec: ModelSpec, device: torch.device, dtype: torch.dtype, attn: str) -> torch.nn.Module:
    """Random-initialised ``LlamaForCausalLM`` of ``spec`` on ``device`` in ``dtype``, attention ``attn``
    ("sdpa", "flash_attention_2", or :data:`VARLEN_ATTN` after :func:`register_varlen_attention`). No BOS/EOS
    ids, so greedy decoding never stops early."""
    from transformers import AutoModelForCausalLM

    config = hf_config_from_spec(spec, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype)
    model.generation_config.eos_token_id = None
    return model


def split_docs(n_tokens: int, doc_len: int | None) -> list[int]:
    """Document lengths of a ``n_tokens`` sequence cut into documents of ``doc_len`` (the last one shorter)."""
    doc = doc_len or n_tokens
    return [min(doc, n_tokens - s) for s in range(0, n_tokens, doc)]


def random_batch(n_tokens: int, vocab: int, doc_lens: list[int] | None, device: torch.device, seed: int = 0) -> dict:
    """One packed sequence of random tokens: ``input_ids``/``labels``/``position_ids`` ``[1, T]`` and
    ``doc_lens`` (one document when None). Labels are the next token within the document (``IGNORE`` on each
    document's last token); positions restart at 0 in every document."""
    doc_lens = list(doc_lens or [n_tokens])
    if sum(doc_lens) != n_tokens:
        raise ValueError(f"doc_lens sum to {sum(doc_lens)}, expected {n_tokens} tokens")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, n_tokens), generator=gen)
    positions = torch.cat([torch.arange(n) for n in doc_lens])[None]
    labels = torch.cat([ids[:, 1:], torch.full((1, 1), IGNORE)], dim=1)
    labels[0, torch.tensor(doc_lens).cumsum(0) - 1] = IGNORE
    return {
        "input_ids": ids.to(device),
        "labels": labels.to(device),
        "position_ids": positions.to(device),
        "doc_lens": doc_lens,
    }


def _chunk_loss(lm_head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = lm_head(hidden).float()
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )


def chunked_loss(model: torch.nn.Module, batch: dict, chunk: int, **forward_kwargs: Any) -> torch.Tensor:
    """Mean next-token loss (nats) of ``batch`` through ``model`` (a ``*ForCausalLM``), output layer and cross
    entropy in checkpointed chunks of ``chunk`` tokens. ``forward_kwargs`` go to the decoder (e.g. varlen
    attention metadata)."""
    hidden = model.model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, **forward_kwargs
    ).last_hidden_state  # [1, T, hidden]
    labels = batch["labels"]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, labels.shape[1], chunk):
        end = start + chunk
        total = total + checkpoint(
            _chunk_loss, model.lm_head, hidden[:, start:end], labels[:, start:end], use_reentrant=False
        )
    return total / (labels != IGNORE).sum().clamp_min(1)


def varlen_forward_kwargs(doc_lens: list[int], device: torch.device) -> dict:
    """Decoder kwargs carrying the document boundaries to :data:`VARLEN_ATTN` (int32 ``cu_seqlens``)."""
    cu = torch.tensor([0, *doc_lens], device=device).cumsum(0).to(torch.int32)
    return {"bench_cu_seqlens": cu, "bench_max_seqlen": max(doc_lens)}


def per_doc_sdpa(q, k, v, cu, max_len, scale=None):
    """Causal torch SDPA document by document (any device; on CUDA each document takes torch's flash kernel,
    so memory stays linear in T). ``[T, H, D]`` with ``k``/``v`` ``[T, H_kv, D]`` -> ``[T, H, D]``."""
    outs = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qd, kd, vd = (x[s:e].transpose(0, 1)[None] for x in (q, k, v))
        out = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale, enable_gqa=True)
        outs.append(out[0].transpose(0, 1))
    return torch.cat(outs)


def flash_attn_kernel():
    """flash-attn's varlen kernel as ``fn(q, k, v, cu, max_len, scale)``, or None when it does not import."""
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception:  # noqa: BLE001 - not installed or a broken build
        return None
    return lambda q, k, v, cu, m, s=None: flash_attn_varlen_func(q, k, v, cu, cu, m, m, causal=True, softmax_scale=s)


def torch_varlen_kernel():
    """torch's ``varlen_attn`` (torch >= 2.10, CUDA) as ``fn(q, k, v, cu, max_len, scale)``, or None. Adapts to
    its signature changes (``is_causal`` in 2.10, ``window_size`` later; ``enable_gqa`` optional)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters

    def fn(q, k, v, cu, m, scale=None):
        kwargs: dict[str, Any] = {"scale": scale}
        if "is_causal" in params:
            kwargs["is_causal"] = True
        else:
            kwargs["window_size"] = (-1, 0)
        if k.shape[1] != q.shape[1]:
            if "enable_gqa" in params:
                kwargs["enable_gqa"] = True
            else:
                k, v = (x.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for x in (k, v))
        return varlen_attn(q, k, v, cu, cu, m, m, **kwargs)

    return fn


def varlen_kernel(device: torch.device) -> tuple[str, Any]:
    """``(name, fn)`` of the best varlen causal attention on ``device``: flash-attn, else torch's
    ``varlen_attn`` (CUDA), else torch SDPA per document. ``fn(q, k, v, cu, max_len, scale)``."""
    if device.type == "cuda":
        for name, factory in (("flash_attn", flash_attn_kernel), ("torch_varlen_attn", torch_varlen_kernel)):
            fn = factory()
            if fn is not None:
                return name, fn
    return "sdpa_per_document", per_doc_sdpa


def register_varlen_attention(device: torch.device) -> str:
    """Register :data:`VARLEN_ATTN` with transformers (documents from ``varlen_forward_kwargs``); returns the
    kernel's name. Its name has no mask function, so transformers builds no ``[T, T]`` mask for it."""
    name, kernel = varlen_kernel(device)
    from transformers import AttentionInterface

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        """query ``[1, H, T, D]``, key/value ``[1, H_kv, T, D]`` -> ``([1, T, H, D], None)``."""
        q, k, v = (x[0].transpose(0, 1).contiguous() for x in (query, key, value))
        out = kernel(q, k, v, kwargs["bench_cu_seqlens"], kwargs["bench_max_seqlen"], scaling)
        return out[None], None

    AttentionInterface.register(VARLEN_ATTN, attention)
    return name


def hf_attention(device: torch.device) -> str:
    """transformers attention for the single-document training steps: flash_attention_2 when flash-attn
    imports on CUDA, else sdpa (whose causal path is torch's own flash kernel on CUDA)."""
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except Exception:  # noqa: BLE001
            pass
    return "sdpa"
