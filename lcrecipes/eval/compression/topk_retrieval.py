"""Top-k retrieval attention at decode time (the study's RetrievalAttention setting), our own implementation.

The whole KV cache is kept (no memory is freed). After the prefill, every query head of every layer attends
only to the `k` context keys with the highest q·k scores for that query, plus, always, every entry after the
context: the question tokens (when they were fed after the context) and the tokens generated so far. Those
post-context entries are the "recent window" that is never dropped; the budget counts context keys only.
The prefill itself uses full attention (as RetrievalAttention/RetroInfer do).

Mode query_aware: context + question are prefilled with full attention; top-k applies to generated tokens.
Mode query_agnostic: the context alone is prefilled; the question's tokens are then fed with top-k attention
over the context (as when a cached context is reused), and generation continues the same way.

Mechanism: `topk_retrieval_attention` is registered in transformers' `AttentionInterface` (and the sdpa mask
builder in `AttentionMaskInterface`) under `ATTN_NAME`. Without the `topk_context_len` / `topk_k` forward
kwargs, or with `k >= topk_context_len`, it calls the registered sdpa function unchanged, so a model using it
behaves exactly like sdpa.

Cost: the exact top-k is found over all scores (no approximate index), so each decode step costs dense attention
plus, per query head, a selection of the (k+1)-th best context score (`boundary_scores`). On CPU that selection
costs about as much as the dense attention itself (bench/RESULTS.md): this models RetrievalAttention's accuracy,
not its speed, which comes from an index that avoids scoring every key.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from lcrecipes.eval.compression.base import CompressionMethod

ATTN_NAME = "lcr_topk_retrieval"
MAX_SCORES = 1 << 27  # scores per chunk of queries: 512 MiB in fp32 (plus the softmax's fp32 copy)


def allowed_positions(
    attention_mask: torch.Tensor | None, q_len: int, kv_len: int, device: torch.device
) -> torch.Tensor:
    """Boolean `[batch or 1, 1, q_len, kv_len]`: True where a query may attend a key.
    No mask means causal with the queries at the last q_len positions; a float mask allows its 0 entries."""
    if attention_mask is None:
        rows = torch.arange(kv_len - q_len, kv_len, device=device).unsqueeze(-1)
        return (torch.arange(kv_len, device=device) <= rows)[None, None]
    if attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask > torch.finfo(attention_mask.dtype).min / 2


def boundary_scores(context: torch.Tensor, k: int) -> torch.Tensor:
    """The (k+1)-th largest entry of each row of `context` `[..., n]` (k < n), shaped `[..., 1]`: the entries
    strictly above it are the row's k largest (exactly k when no entry ties with it).

    Only the boundary is computed, not which k: masking by it is one comparison. On CPU (fp32/fp64) with one
    intra-op thread, as the tiny CPU recipes evaluate and the bench runs, numpy's `partition` (a selection over
    the values alone) finds it: `torch.topk` there runs `std::nth_element` over (value, index) pairs and is
    1.3-2.1x slower per row of 1K-8K scores (bench/bench_compression.py, "top-k selection"). With more threads
    `torch.topk` splits the rows among them and numpy would not; on CUDA, or in bf16, `torch.topk` of k + 1
    entries is used.
    """
    n = context.shape[-1]
    cpu_float = context.device.type == "cpu" and context.dtype in (torch.float32, torch.float64)
    if cpu_float and torch.get_num_threads() == 1:
        i = n - k - 1  # ascending order: index n-k-1 holds the (k+1)-th largest
        return torch.from_numpy(np.partition(context.detach().numpy(), i, axis=-1)[..., i : i + 1])
    return context.topk(k + 1, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)


def topk_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor | None,
    n_context: int,
    k: int,
    scaling: float,
    max_scores: int = MAX_SCORES,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention where each query head sees only its top-`k` context keys (positions < n_context) by q·k,
    plus every allowed key at positions >= n_context. Keys tied with the (k+1)-th best score are dropped with
    it (so a row keeps fewer than k only on exact ties).

    query `[b, heads, q, d]`; key, value `[b, kv_heads, kv, d]` (heads = groups x kv_heads, as `repeat_kv`);
    allowed: bool `[b or 1, 1, q, kv]`, or None when every key may be attended. Returns output `[b, q, heads, d]`
    and weights `[b, heads, q, kv]` (fp32 softmax cast to the query dtype; exactly zero off the chosen keys).
    When `b x heads x q x kv` exceeds `max_scores` (a long question over a long cache, e.g. 200 tokens x 28 heads
    x 1M keys = 5.6G scores), the queries are taken in chunks that fit and the weights are not returned (None).
    """
    b, heads, q_len, d = query.shape
    per_query = b * heads * key.shape[2]
    if q_len > 1 and q_len * per_query > max_scores:
        step = max(1, max_scores // per_query)
        outputs = [
            topk_attention(
                query[:, :, i : i + step], key, value, None if allowed is None else allowed[:, :, i : i + step],
                n_context, k, scaling, max_scores,
            )[0]
            for i in range(0, q_len, step)
        ]  # fmt: skip
        return torch.cat(outputs, dim=1), None
    kv_heads = key.shape[1]
    # the query heads sharing one KV head are rows of one matmul: no copy of the cache for GQA; scale the few
    # queries, not every score
    scores = torch.matmul(query.reshape(b, kv_heads, -1, d) * scaling, key.transpose(2, 3))
    if k < n_context:
        context = scores[..., :n_context]
        # shift each row by its boundary (softmax does not see a per-row shift), then drop what is not above 0;
        # in place, two passes and no second score matrix or boolean mask (x - t > 0 exactly when x > t)
        scores.sub_(boundary_scores(context, k))
        torch.nn.functional.threshold(context, 0.0, float("-inf"), inplace=True)
    if allowed is not None:
        scores.view(b, heads, q_len, -1).masked_fill_(allowed.logical_not(), float("-inf"))
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(weights, value)
    return output.view(b, heads, q_len, -1).transpose(1, 2), weights.view(b, heads, q_len, -1)


def topk_retrieval_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    topk_context_len: int | None = None,
    topk_k: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers attention function (registered as `ATTN_NAME`). query `[b, heads, q, d]`, key/value
    `[b, kv_heads, kv, d]`; returns `[b, q, heads, d]` and the weights (None on the sdpa path)."""
    if topk_k is None or topk_context_len is None or topk_k >= topk_context_len:
        sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
        return sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if topk_context_len > key.shape[2] - query.shape[2]:
        raise ValueError(
            f"top-k context of {topk_context_len} keys overlaps the {query.shape[2]} current queries "
            f"(cache holds {key.shape[2]}); top-k applies only after the context prefill"
        )
    q_len = query.shape[2]
    single = attention_mask is None and q_len == 1  # one decode query may attend every cached key
    allowed = None if single else allowed_positions(attention_mask, q_len, key.shape[2], query.device)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return topk_attention(query, key, value, allowed, topk_context_len, topk_k, scale)


AttentionInterface.register(ATTN_NAME, topk_retrieval_attention)
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


class TopKRetrieval(CompressionMethod):
    """RetrievalAttention setting: full cache kept (kv_bytes_kept == full), decode attends to the top-k
    context keys per query head plus all post-context entries; k = the budget in context tokens."""

    name = "topk_retrieval"
    attn_implementation = ATTN_NAME
    frees_memory = False

    def decode_kwargs(self, n_context: int, n_keep: int) -> dict[str, Any]:
        return {"topk_context_len": n_context, "topk_k": n_keep}
