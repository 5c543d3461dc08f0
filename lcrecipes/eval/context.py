"""From an example to model inputs: context truncation to a token budget, the chat-templated prompt split into
context and question token ids (what compression methods take), and the token span of every ``[DOC i]``.

The strategy's user message is ``instruction, [DOC i] context, question`` (:meth:`Strategy.prompt`); the split
falls right after the rendered context, so everything after it (question, options, chat-template suffix) is the
question part. Token counts are of the model's own tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lcrecipes.data.example import Passage, RetrievalExample, render_context, render_doc


@dataclass
class EncodedPrompt:
    """``context_ids`` + ``question_ids`` is the whole prompt; ``doc_spans[i]`` is the ``[start, end)`` token range
    of ``[DOC i+1]`` inside ``context_ids``."""

    context_ids: list[int]
    question_ids: list[int]
    doc_spans: list[tuple[int, int]]
    text: str


def chat_text(tokenizer, user: str) -> str:
    """``user`` as a one-turn chat with the generation prompt when the tokenizer has a chat template, else as is."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    return user


def doc_char_spans(docs: list[Passage]) -> list[tuple[int, int]]:
    """``[start, end)`` character range of each rendered doc inside :func:`render_context` (``\\n\\n``-joined)."""
    spans, pos = [], 0
    for i, p in enumerate(docs, start=1):
        n = len(render_doc(i, p))
        spans.append((pos, pos + n))
        pos += n + 2
    return spans


def encode_prompt(tokenizer, user: str, docs: list[Passage]) -> EncodedPrompt:
    """Tokenize the chat-templated ``user`` message, split right after its rendered ``docs``."""
    ctx = render_context(docs)
    at = user.find(ctx)
    if at < 0:
        raise ValueError("the strategy's prompt does not contain the rendered [DOC i] context verbatim")
    text = chat_text(tokenizer, user)
    user_at = text.find(user)
    if user_at < 0:
        raise ValueError("the chat template changed the user message; cannot locate the context in the prompt")
    base = user_at + at
    split = base + len(ctx)
    enc = tokenizer(text[:split], add_special_tokens=text == user, return_offsets_mapping=True)
    q_ids = tokenizer(text[split:], add_special_tokens=False)["input_ids"]
    spans = _token_spans(enc["offset_mapping"], [(base + a, base + b) for a, b in doc_char_spans(docs)])
    return EncodedPrompt(list(enc["input_ids"]), list(q_ids), spans, text)


def _token_spans(offsets: list[tuple[int, int]], char_spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token ``[start, end)`` of each character span: tokens whose first character falls inside it."""
    out, t = [], 0
    for a, b in char_spans:
        while t < len(offsets) and (offsets[t][0] < a or offsets[t][1] == offsets[t][0]):
            t += 1
        s = t
        while t < len(offsets) and offsets[t][0] < b:
            t += 1
        out.append((s, t))
    return out


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _cut(text: str, tokenizer, n: int, keep: str) -> str:
    """The first (``keep="head"``) or last (``"tail"``) ``n`` tokens of ``text``, as a verbatim substring."""
    if n <= 0:
        return ""
    offs = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if n >= len(offs):
        return text
    return text[: offs[n - 1][1]] if keep == "head" else text[offs[len(offs) - n][0] :]


def truncate_example(
    example: RetrievalExample, tokenizer, max_tokens: int, side: str
) -> tuple[RetrievalExample, int, int]:
    """Cut the context to about ``max_tokens`` tokens: ``end`` keeps the beginning, ``middle`` keeps the first and
    last halves (the InfiniteBench convention). Whole passages are kept or dropped and the passage on a boundary
    is cut at a token; gold ids and supporting sentences follow the kept passages.

    Returns ``(example, tokens before, tokens after)``, counting each rendered ``[DOC i]`` block.
    """
    sizes = [n_tokens(tokenizer, render_doc(i, p)) for i, p in enumerate(example.docs, start=1)]
    total = sum(sizes)
    if total <= max_tokens:
        return example, total, total
    if side == "end":
        kept = _take(example.docs, sizes, range(len(sizes)), max_tokens, tokenizer, "head")
    elif side == "middle":
        head = _take(example.docs, sizes, range(len(sizes)), max_tokens // 2, tokenizer, "head")
        taken = {i for i, _ in head}
        rest = [i for i in reversed(range(len(sizes))) if i not in taken]
        tail = _take(example.docs, sizes, rest, max_tokens - max_tokens // 2, tokenizer, "tail")
        kept = head + sorted(tail)
    else:
        raise ValueError(f"truncation side must be 'middle' or 'end', got {side!r}")
    new = _remap(example, kept)
    after = sum(n_tokens(tokenizer, render_doc(i, p)) for i, p in enumerate(new.docs, start=1))
    return new, total, after


def _take(docs, sizes, order, budget, tokenizer, keep) -> list[tuple[int, Passage]]:
    """Passages in ``order`` while they fit ``budget``; the first that does not fit is cut to the remainder."""
    out, used = [], 0
    for i in order:
        if used + sizes[i] <= budget:
            out.append((i, docs[i]))
            used += sizes[i]
            continue
        overhead = sizes[i] - n_tokens(tokenizer, docs[i].text)
        text = _cut(docs[i].text, tokenizer, budget - used - overhead, keep)
        if text.strip():
            out.append((i, replace(docs[i], text=text)))
        break
    return out


def _remap(example: RetrievalExample, kept: list[tuple[int, Passage]]) -> RetrievalExample:
    new_id = {i + 1: k for k, (i, _) in enumerate(kept, start=1)}
    docs = [p for _, p in kept]
    gold = [new_id[g] for g in example.gold if g in new_id]
    supporting = {
        new_id[g]: [s for s in sents if s in docs[new_id[g] - 1].text]
        for g, sents in example.supporting.items()
        if g in new_id
    }
    return replace(example, docs=docs, gold=gold, supporting=supporting)


def generate_text(model, tokenizer, user: str, max_new_tokens: int) -> str:
    """Greedy answer of ``model`` to one chat-templated user message (used by the LLM judge)."""
    import torch

    text = chat_text(tokenizer, user)
    ids = tokenizer(text, add_special_tokens=text == user, return_tensors="pt")["input_ids"].to(model.device)
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )  # fmt: skip
    return tokenizer.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)
