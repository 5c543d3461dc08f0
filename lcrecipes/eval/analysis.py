"""Attention-based document ranking (the study's Table 4): rank the ``[DOC i]`` passages by the attention mass the
answer's tokens put on them, and score that ranking against the gold passages with NDCG@10.

The attention probabilities are recomputed layer by layer from the inputs each self-attention module receives
(a forward pre-hook reads its normed hidden states and rotary embeddings), for the answer's query positions only:
memory is ``[heads, answer tokens, sequence]`` per layer, never the full ``[sequence, sequence]`` map. Works for
HF Llama-style attention (``q_proj``/``k_proj``, grouped KV heads, RoPE; Qwen2 too). Checked against the eager
attention's ``output_attentions`` in the tests.
"""

from __future__ import annotations

import math

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


def ndcg_at_k(scores: list[float], gold: list[int], k: int = 10) -> float:
    """NDCG@k of docs ranked by ``scores`` (``scores[i]`` is ``[DOC i+1]``'s) against binary gold 1-based ids.

    Ties keep document order. No gold gives NaN.
    """
    gold_set = set(gold)
    if not gold_set:
        return math.nan
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    dcg = sum(1.0 / math.log2(r + 2) for r, i in enumerate(order[:k]) if i + 1 in gold_set)
    idcg = sum(1.0 / math.log2(r + 2) for r in range(min(k, len(gold_set))))
    return dcg / idcg


def _layer_mass(attn, hidden: torch.Tensor, cos_sin, first: int) -> torch.Tensor:
    """Attention probabilities of query positions ``first..`` over all keys, mean over heads: ``[A, S]``.

    hidden: ``[1, S, hidden]`` the module's input (already normed); cos_sin: the rotary embeddings ``[1, S, d]``.
    """
    cfg = attn.config
    n_q, n_kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, attn.head_dim
    s = hidden.shape[1]
    q = attn.q_proj(hidden[:, first:]).view(1, s - first, n_q, d).transpose(1, 2)
    k = attn.k_proj(hidden).view(1, s, n_kv, d).transpose(1, 2)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    cos, sin = cos_sin
    q, _ = apply_rotary_pos_emb(q, q, cos[:, first:], sin[:, first:])
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    k = k.repeat_interleave(n_q // n_kv, dim=1)
    logits = (q.float() @ k.float().transpose(-1, -2)) * attn.scaling  # [1, H, A, S]
    pos_q = torch.arange(first, s, device=q.device)[:, None]
    logits = logits.masked_fill(torch.arange(s, device=q.device)[None, :] > pos_q, float("-inf"))
    return logits.softmax(-1)[0].mean(0)


def answer_attention(model, prompt_ids: list[int], answer_ids: list[int]) -> torch.Tensor:
    """Mean (over layers, heads and answer tokens) attention of the answer's tokens on every position: ``[S]``.

    The sequence is ``prompt_ids + answer_ids`` (S tokens); the answer's queries are its own positions.
    """
    ids = torch.tensor([list(prompt_ids) + list(answer_ids)], device=model.device)
    first = len(prompt_ids)
    total = torch.zeros(ids.shape[1], dtype=torch.float32, device=model.device)
    layers = [m for m in model.modules() if hasattr(m, "q_proj") and hasattr(m, "k_proj")]

    def hook(module, args, kwargs):
        nonlocal total
        total += _layer_mass(module, kwargs["hidden_states"], kwargs["position_embeddings"], first).mean(0)

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in layers]
    try:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    return (total / len(layers)).cpu()


def doc_attention(mass: torch.Tensor, doc_spans: list[tuple[int, int]]) -> list[float]:
    """Attention mass of each document: the sum of ``mass`` over its token span."""
    return [float(mass[a:b].sum()) for a, b in doc_spans]


def attention_ndcg(
    model, prompt_ids: list[int], answer_ids: list[int], doc_spans: list[tuple[int, int]], gold: list[int], k=10
) -> tuple[float, list[float]]:
    """``(NDCG@k, per-document attention mass)`` for one example; NaN without gold or an empty answer."""
    if not gold or not answer_ids:
        return math.nan, []
    scores = doc_attention(answer_attention(model, prompt_ids, answer_ids), doc_spans)
    return ndcg_at_k(scores, gold, k), scores
