"""Attention-based document ranking: NDCG@k, and the answer-to-context attention mass checked against the eager
attention probabilities HF returns with ``output_attentions`` (tolerance 1e-5, fp32)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from lcrecipes.eval.analysis import answer_attention, attention_ndcg, doc_attention, ndcg_at_k


def test_ndcg_at_k():
    scores = [0.1, 0.5, 0.3]
    assert ndcg_at_k(scores, [2]) == 1.0
    assert ndcg_at_k(scores, [1]) == pytest.approx(1 / math.log2(4))
    dcg, idcg = 1 / math.log2(3) + 1 / math.log2(4), 1 + 1 / math.log2(3)
    assert ndcg_at_k(scores, [1, 3]) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(scores, [1], k=2) == 0.0
    assert math.isnan(ndcg_at_k(scores, []))
    assert ndcg_at_k([0.0, 0.0], [1]) == 1.0  # ties keep document order


def _model(family: str):
    torch.manual_seed(0)
    kw = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, attn_implementation="eager")  # fmt: skip
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**kw)).eval()
    return Qwen2ForCausalLM(Qwen2Config(**kw)).eval()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_answer_attention_matches_eager_attentions(family):
    model = _model(family)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 96, (40,), generator=gen).tolist()
    answer = torch.randint(0, 96, (5,), generator=gen).tolist()
    mass = answer_attention(model, prompt, answer)
    with torch.no_grad():
        att = model(torch.tensor([prompt + answer]), output_attentions=True).attentions
    ref = torch.stack([a[0, :, len(prompt) :, :].mean(0).mean(0) for a in att]).mean(0)
    torch.testing.assert_close(mass, ref, atol=1e-5, rtol=1e-5)
    assert mass.sum().item() == pytest.approx(1.0, abs=1e-5)  # each query's row sums to 1

    spans = [(0, 10), (10, 25), (25, 40)]
    scores = doc_attention(mass, spans)
    ndcg, got = attention_ndcg(model, prompt, answer, spans, gold=[2])
    assert got == pytest.approx(scores) and ndcg == ndcg_at_k(scores, [2])
    assert math.isnan(attention_ndcg(model, prompt, [], spans, [2])[0])
