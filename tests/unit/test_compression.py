"""KV-cache compression methods on a tiny random Llama (2 layers, hidden 64, 4 heads, 2 KV heads, fp32, CPU)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from kvpress import KnormPress, KVPressTextGenerationPipeline, SnapKVPress
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from lcrecipes.eval.compression import (
    METHODS,
    MODES,
    CompressionMethod,
    GenerationResult,
    get_method,
    memory_claim_holds,
    n_kept_tokens,
)
from lcrecipes.eval.compression.press import QuestionKeepingPress, press_ratio
from lcrecipes.eval.compression.topk_retrieval import ATTN_NAME, boundary_scores, topk_attention

VOCAB, N_CONTEXT, N_QUESTION, MAX_NEW = 128, 160, 8, 12
EXPECTED = {"none", "snapkv", "streamingllm", "knorm", "tova", "expected_attention", "keydiff", "topk_retrieval"}


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaForCausalLM]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest and fair to a shared machine
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=0, eos_token_id=1, pad_token_id=0,
        attn_implementation="sdpa", torch_dtype=torch.float32,
    )  # fmt: skip
    yield LlamaForCausalLM(config).eval()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompt() -> tuple[list[int], list[int]]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (N_CONTEXT + N_QUESTION,), generator=gen).tolist()
    return ids[:N_CONTEXT], ids[N_CONTEXT:]


def _tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over "t0".."t127" built in memory (no download)."""
    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t2"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.WhitespaceSplit(), decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t0", eos_token="t1", pad_token="t0")


def _reference(model, context: list[int], question: list[int]) -> list[int]:
    ids = torch.tensor([context + question])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


def test_registry_complete():
    assert set(METHODS) == EXPECTED
    for key, cls in METHODS.items():
        assert issubclass(cls, CompressionMethod) and cls.name == key
        assert cls.modes and set(cls.modes) <= set(MODES)
        assert cls.attn_implementation == "eager" or cls.attn_implementation in ALL_ATTENTION_FUNCTIONS
        assert isinstance(cls.frees_memory, bool)
        assert isinstance(get_method(key), cls)
    with pytest.raises(ValueError, match="unknown compression method"):
        get_method("h2o")
    with pytest.raises(ValueError, match="window_sise"):
        get_method("snapkv", window_sise=8)
    with pytest.raises(ValueError, match="topk_retrieval"):
        get_method("topk_retrieval", k=3)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_method_runs_in_its_modes_and_keeps_what_it_declares(model, prompt, name):
    method = get_method(name)
    for mode in method.modes:
        for budget in (0.25, 40):
            res = method.generate(model, None, *prompt, budget=budget, mode=mode, max_new_tokens=MAX_NEW)
            assert 1 <= len(res.output_ids) <= MAX_NEW and res.text == ""
            assert res.n_context_tokens == N_CONTEXT and res.prefill_s > 0 and res.decode_s >= 0
            assert res.peak_rss_bytes > 0
            assert res.kv_bytes_full == N_CONTEXT * 2 * 2 * 2 * 16 * 4  # positions x layers x (k,v) x heads x d x fp32
            expected = res.kv_bytes_full * (0.25 if method.frees_memory else 1.0)
            assert abs(res.kv_bytes_kept - expected) <= 0.01 * expected, (mode, budget, res.kv_bytes_kept)
            assert memory_claim_holds(method, res, budget)
    assert model.config._attn_implementation == "sdpa"  # restored after every call


@pytest.mark.parametrize("mode", MODES)
def test_none_matches_model_generate(model, prompt, mode):
    res = get_method("none").generate(model, _tokenizer(), *prompt, budget=0.1, mode=mode, max_new_tokens=MAX_NEW)
    assert res.output_ids == _reference(model, *prompt)
    assert res.text == _tokenizer().decode(res.output_ids, skip_special_tokens=True)


def test_query_agnostic_press_matches_kvpress_pipeline(model, prompt):
    """Our adapter and kvpress's own pipeline, same press, same ids: same answer."""
    context, question = prompt
    method, tok = get_method("snapkv", window_size=16), _tokenizer()
    ours = method.generate(model, tok, context, question, budget=0.25, mode="query_agnostic", max_new_tokens=MAX_NEW)
    pipe = KVPressTextGenerationPipeline(model=model, tokenizer=tok)
    press = SnapKVPress(compression_ratio=press_ratio(N_CONTEXT, 40), window_size=16)
    inputs = {"context_ids": torch.tensor([context]), "questions_ids": [torch.tensor([question])]}
    theirs = pipe._forward(inputs, max_new_tokens=MAX_NEW, press=press)[0]
    assert ours.text == theirs


def test_query_aware_press_always_keeps_the_question():
    """Knorm keeps small-norm keys; the question's keys get huge norms and must survive anyway."""
    torch.manual_seed(0)
    keys, values = torch.randn(1, 2, 30, 16), torch.randn(1, 2, 30, 16)
    keys[:, :, -5:] *= 100
    press = QuestionKeepingPress(press=KnormPress(compression_ratio=press_ratio(30, 15)), n_keep=10, n_protected=5)
    kept_k, kept_v = press.compress(None, torch.zeros(1, 30, 64), keys, values, None, {})
    assert kept_k.shape == (1, 2, 15, 16)
    torch.testing.assert_close(kept_k[:, :, -5:], keys[:, :, -5:], rtol=0, atol=0)
    smallest = (-keys[:, :, :25].norm(dim=-1)).topk(10, dim=-1).indices.sort(dim=-1).values
    expected = values.gather(2, smallest.unsqueeze(-1).expand(-1, -1, -1, 16))
    torch.testing.assert_close(kept_v[:, :, :10], expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_topk_with_every_key_equals_no_compression(model, prompt, mode):
    ref = get_method("none").generate(model, None, *prompt, budget=1.0, mode=mode, max_new_tokens=MAX_NEW)
    for budget in (1.0, N_CONTEXT):
        res = get_method("topk_retrieval").generate(model, None, *prompt, budget, mode, MAX_NEW)
        assert res.output_ids == ref.output_ids


def test_topk_small_k_differs_and_attends_only_k_context_keys(model, prompt):
    weights: list[torch.Tensor] = []
    hooks = [
        layer.self_attn.register_forward_hook(lambda mod, args, out: weights.append(out[1]))
        for layer in model.model.layers
    ]
    try:
        res = get_method("topk_retrieval").generate(model, None, *prompt, 2, "query_agnostic", MAX_NEW)
    finally:
        for hook in hooks:
            hook.remove()
    ref = get_method("none").generate(model, None, *prompt, 1.0, "query_agnostic", MAX_NEW)
    assert res.output_ids != ref.output_ids
    decode = [w for w in weights if w is not None]  # prefill runs sdpa (no weights)
    assert len(decode) == 2 * (1 + len(res.output_ids) - 1)  # layers x (question + decode steps)
    for w in decode:  # [1, heads, q, kv]
        assert torch.all((w[..., :N_CONTEXT] > 0).sum(-1) == 2)
        assert torch.all(w[..., N_CONTEXT:].sum(-1) > 0)  # post-context entries always attended


def test_topk_kernel_with_all_keys_matches_dense_attention():
    """GQA (4 query heads, 2 KV heads), 3 queries after a 17-token context, causal among the last 3 keys."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 3, 16), torch.randn(1, 2, 20, 16), torch.randn(1, 2, 20, 16)
    allowed = (torch.arange(20) <= torch.arange(17, 20).unsqueeze(-1))[None, None]
    out, _ = topk_attention(q, k, v, allowed, n_context=17, k=17, scaling=0.25)
    k4, v4 = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    scores = (q @ k4.transpose(2, 3) * 0.25).masked_fill(~allowed, float("-inf"))
    torch.testing.assert_close(out, (scores.softmax(-1) @ v4).transpose(1, 2), rtol=1e-6, atol=1e-6)
    _, w3 = topk_attention(q, k, v, allowed, n_context=17, k=3, scaling=0.25)
    assert torch.all((w3[..., :17] > 0).sum(-1) == 3)
    chosen = w3[..., :17].topk(3, dim=-1).indices.sort(-1).values
    assert torch.equal(chosen, scores[..., :17].topk(3, dim=-1).indices.sort(-1).values)  # the highest q·k
    assert ATTN_NAME in ALL_ATTENTION_FUNCTIONS


@pytest.mark.parametrize("q_len", [1, 3])
def test_topk_kernel_equals_dense_attention_on_the_top_k_keys(q_len):
    """Reference: dense scores with every context key outside each query head's top-k set to -inf."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, q_len, 16), torch.randn(1, 2, 20, 16), torch.randn(1, 2, 20, 16)
    allowed = None if q_len == 1 else (torch.arange(20) <= torch.arange(20 - q_len, 20).unsqueeze(-1))[None, None]
    out, w = topk_attention(q, k, v, allowed, n_context=15, k=5, scaling=0.25)
    k4, v4 = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    scores = q @ k4.transpose(2, 3) * 0.25
    top = scores[..., :15].topk(5, dim=-1).indices
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep[..., :15] = torch.zeros_like(scores[..., :15], dtype=torch.bool).scatter(-1, top, True)
    if allowed is not None:
        keep &= allowed
    ref = scores.masked_fill(~keep, float("-inf")).softmax(-1)
    torch.testing.assert_close(w, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out, (ref @ v4).transpose(1, 2), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("dtype", "threads"), [(torch.float32, 1), (torch.float64, 1), (torch.float32, 2),
                                                (torch.float16, 1)])  # fmt: skip
def test_boundary_scores_is_the_k_plus_first_largest(dtype, threads):
    """fp32/fp64 on one CPU thread take numpy's partition, the rest torch.topk: both give the (k+1)-th largest of
    each row, strided rows included (the kernel passes the context slice of a longer score row)."""
    torch.manual_seed(0)
    rows = torch.randn(3, 5, 70).to(dtype)[..., :64]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for k in (1, 16, 63):
            expected = rows.sort(dim=-1, descending=True).values[..., k : k + 1]
            got = boundary_scores(rows, k)
            assert got.dtype == dtype and got.shape == (3, 5, 1)
            assert torch.equal(got, expected)
            assert torch.all((rows > got).sum(-1) == k)
    finally:
        torch.set_num_threads(before)


def test_topk_kernel_takes_long_questions_in_chunks_that_fit():
    """5 causal queries whose scores exceed max_scores run as chunks of 2, 2 and 1 queries, and return no
    weights (they would be the matrix the chunks avoid); outputs equal to rounding."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 5, 16), torch.randn(1, 2, 25, 16), torch.randn(1, 2, 25, 16)
    allowed = (torch.arange(25) <= torch.arange(20, 25).unsqueeze(-1))[None, None]
    whole, weights = topk_attention(q, k, v, allowed, n_context=20, k=6, scaling=0.25)
    chunked, none = topk_attention(q, k, v, allowed, n_context=20, k=6, scaling=0.25, max_scores=2 * 4 * 25)
    assert weights is not None and none is None
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)  # other matmul shapes: rounding only


@pytest.mark.gpu
def test_topk_kernel_on_cuda_bf16_keeps_the_best_keys():
    """The CUDA path selects with torch.topk in bf16: each head keeps 32 keys (fewer only on bf16 ties at the
    boundary), every kept key outscores every dropped one, and the output is fp32 attention over the kept keys."""
    torch.manual_seed(0)
    q, k, v = (t.to("cuda", torch.bfloat16) for t in (torch.randn(1, 4, 1, 16), *torch.randn(2, 1, 2, 300, 16)))
    out, w = topk_attention(q, k, v, None, n_context=256, k=32, scaling=0.25)
    scores = torch.matmul(q.reshape(1, 2, 2, 16) * 0.25, k.transpose(2, 3)).view(1, 4, 1, 300).float().cpu()
    kept = w.float().cpu()[..., :256] > 0
    assert torch.all(kept.sum(-1) <= 32) and torch.all(kept.sum(-1) >= 30)
    context = scores[..., :256]
    lowest_kept = context.masked_fill(~kept, float("inf")).amin(-1)
    assert torch.all(lowest_kept > context.masked_fill(kept, float("-inf")).amax(-1))
    keep = torch.cat([kept, torch.ones(1, 4, 1, 44, dtype=torch.bool)], dim=-1)
    ref = scores.masked_fill(~keep, float("-inf")).softmax(-1) @ v.float().cpu().repeat_interleave(2, dim=1)
    torch.testing.assert_close(out.float().cpu(), ref.transpose(1, 2), rtol=2e-2, atol=2e-2)


def test_topk_kernel_drops_keys_tied_with_the_boundary():
    """Two context keys tie for the k-th/(k+1)-th best score: both are dropped, so the head sees k - 1."""
    q = torch.ones(1, 1, 1, 2)
    k = torch.tensor([[[[1.0, 0.0], [3.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 0.0]]]])
    v = torch.arange(10.0).view(1, 1, 5, 2)
    _, w = topk_attention(q, k, v, None, n_context=4, k=2, scaling=1.0)
    assert torch.equal(w[0, 0, 0] > 0, torch.tensor([False, True, False, False, True]))


def test_budget_and_call_validation(model, prompt):
    assert n_kept_tokens(0.25, 160) == 40 and n_kept_tokens(500, 160) == 160 and n_kept_tokens(1e-6, 160) == 1
    for bad in (0.0, 1.5, 0, True, "0.5"):
        with pytest.raises((ValueError, TypeError)):
            n_kept_tokens(bad, 160)
    unchanged = GenerationResult("", [5], 1000, 1000, 1, 0.1, 0.1, N_CONTEXT)  # a press that freed nothing
    assert not memory_claim_holds(get_method("snapkv"), unchanged, 0.5)
    assert memory_claim_holds(get_method("topk_retrieval"), unchanged, 0.5)
    with pytest.raises(ValueError, match="modes"):
        get_method("knorm").generate(model, None, *prompt, 0.5, "both", MAX_NEW)
    with pytest.raises(ValueError, match="empty"):
        get_method("knorm").generate(model, None, [], prompt[1], 0.5, "query_aware", MAX_NEW)
