"""Context truncation to a token budget and the prompt split into context / question ids with DOC spans."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lcrecipes.data.example import Passage, RetrievalExample, render_doc
from lcrecipes.eval.context import encode_prompt, n_tokens, truncate_example
from lcrecipes.strategies import get_strategy

WORDS = (
    "alpha beta gamma delta city river mountain born in the of and a revenue net income company year filing "
    "profit question answer document who where what which was is Paris Rome Oslo Lima Acme Corp"
).split()
CHAT = "{% for m in messages %}<s>user: {{ m['content'] }}\n{% endfor %}assistant: "


def sentences(n: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) + "." for _ in range(n)]


def tiny_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE (vocab 400) trained in memory on a few sentences: offline, with offsets."""
    rng = random.Random(0)
    corpus = sentences(300, rng) + ["Answer: Documents: [DOC 1] Question: Quotes: Content: Reasoning: > A. B."] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))  # fmt: skip
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.add_bos_token = True
    if chat:
        fast.chat_template = CHAT
    return fast


def save_tiny_llama(tok, out: Path, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    max_positions: int = 2048) -> Path:
    """A seeded random LlamaForCausalLM for ``tok`` (ffn = 2 x hidden), saved with the tokenizer in ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return tiny_tokenizer()


def example(n_docs: int = 8, seed: int = 0) -> RetrievalExample:
    rng = random.Random(seed)
    docs = [Passage(f"p{i}", f"Title {i}", " ".join(sentences(4, rng))) for i in range(n_docs)]
    first = docs[1].text.split(".")[0] + "."
    last = docs[n_docs - 2].text.split(".")[0] + "."
    return RetrievalExample("q", "Where?", ["Oslo"], docs, gold=[2, n_docs - 1],
                            supporting={2: [first], n_docs - 1: [last]})  # fmt: skip


def doc_tokens(tok, ex: RetrievalExample) -> int:
    return sum(n_tokens(tok, render_doc(i, p)) for i, p in enumerate(ex.docs, start=1))


def test_short_context_is_untouched(tok):
    ex = example()
    new, before, after = truncate_example(ex, tok, 10_000, "middle")
    assert new is ex and before == after == doc_tokens(tok, ex)


def test_truncate_end_keeps_the_beginning(tok):
    ex = example()
    total = doc_tokens(tok, ex)
    new, before, after = truncate_example(ex, tok, total // 3, "end")
    assert before == total and after <= total // 3 and after == doc_tokens(tok, new)
    assert new.docs[0] == ex.docs[0] and ex.docs[len(new.docs) - 1].text.startswith(new.docs[-1].text)
    assert new.gold == [2] and new.supporting == {2: ex.supporting[2]}


def test_truncate_middle_keeps_both_ends_and_remaps_gold(tok):
    ex = example()
    total = doc_tokens(tok, ex)
    new, _, after = truncate_example(ex, tok, total // 2, "middle")
    assert after <= total // 2 + 4  # per-doc counts; the cut lands on a token of the boundary passage
    assert new.docs[0] == ex.docs[0] and new.docs[-1] == ex.docs[-1] and len(new.docs) < len(ex.docs)
    assert new.gold == [2, len(new.docs) - 1] and ex.docs[-2].text.endswith(new.docs[-2].text)
    assert set(new.supporting) == set(new.gold)
    assert all(s in new.docs[g - 1].text for g, sents in new.supporting.items() for s in sents)
    with pytest.raises(ValueError, match="truncation side"):
        truncate_example(ex, tok, 10, "start")


@pytest.mark.parametrize("chat", [True, False])
def test_encode_prompt_splits_after_the_context_and_spans_cover_each_doc(chat):
    tok = tiny_tokenizer(chat)
    ex = example(5)
    user = get_strategy("doc_ids").prompt(ex)
    enc = encode_prompt(tok, user, ex.docs)
    assert tok.decode(enc.context_ids + enc.question_ids) == enc.text if chat else True
    assert tok.decode(enc.question_ids).lstrip().startswith("Question: Where?")
    assert enc.text.endswith("assistant: ") == chat
    if not chat:
        assert enc.context_ids[0] == tok.bos_token_id
    for i, (a, b) in enumerate(enc.doc_spans, start=1):
        assert tok.decode(enc.context_ids[a:b]) == render_doc(i, ex.docs[i - 1])
    with pytest.raises(ValueError, match="does not contain the rendered"):
        encode_prompt(tok, "no context here", ex.docs)
