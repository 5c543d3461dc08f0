"""RAG contexts: an example's passages cut into chunks of at most ``chunk_tokens`` tokens, ranked against the
question, and kept in rank order until a token budget is spent (the last kept chunk is cut to fit).

Chunks never cross a passage boundary except by packing whole consecutive short passages together; a passage
longer than ``chunk_tokens`` is cut at token boundaries (by the tokenizer's character offsets, so chunk text stays
a verbatim substring). A chunk is gold when it holds (part of) a gold passage.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lcrecipes.data.example import Passage, RetrievalExample
from lcrecipes.eval.rag.base import Retriever


@dataclass(frozen=True)
class Chunk:
    text: str
    n_tokens: int
    sources: tuple[int, ...]  # 1-based DOC ids of the passages it holds


def passage_text(p: Passage) -> str:
    return f"{p.title}\n{p.text}" if p.title else p.text


def token_pieces(text: str, tokenizer, size: int) -> list[tuple[str, int]]:
    """``text`` cut into pieces of at most ``size`` tokens: ``[(piece, n_tokens)]``."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    out = []
    for s in range(0, len(ids), size):
        e = min(s + size, len(ids))
        out.append((text[offs[s][0] : offs[e - 1][1]], e - s))
    return out


def chunk_passages(docs: list[Passage], tokenizer, chunk_tokens: int) -> list[Chunk]:
    """Greedy packing of consecutive passages into chunks of at most ``chunk_tokens`` tokens."""
    chunks: list[Chunk] = []
    cur_text, cur_n, cur_src = [], 0, []
    for i, p in enumerate(docs, start=1):
        text = passage_text(p)
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if cur_text and cur_n + n > chunk_tokens:
            chunks.append(Chunk("\n\n".join(cur_text), cur_n, tuple(cur_src)))
            cur_text, cur_n, cur_src = [], 0, []
        if n > chunk_tokens:
            chunks += [Chunk(t, k, (i,)) for t, k in token_pieces(text, tokenizer, chunk_tokens)]
            continue
        cur_text.append(text)
        cur_n += n
        cur_src.append(i)
    if cur_text:
        chunks.append(Chunk("\n\n".join(cur_text), cur_n, tuple(cur_src)))
    return chunks


def rank_chunks(
    example: RetrievalExample, tokenizer, retriever: Retriever, chunk_tokens: int = 2048
) -> tuple[list[Chunk], list[int]]:
    """``(chunks, order)``: the example's chunks and their indices, most relevant to the question first."""
    chunks = chunk_passages(example.docs, tokenizer, chunk_tokens)
    order = retriever.rank(example.question, [c.text for c in chunks]) if chunks else []
    return chunks, order


def cut_to_budget(
    example: RetrievalExample, chunks: list[Chunk], order: list[int], tokenizer, budget: int
) -> tuple[RetrievalExample, dict]:
    """The example with its passages replaced by the ranked chunks (rank order) within ``budget`` tokens.

    Returns ``(example, info)`` with info ``n_chunks``, ``n_kept_chunks``, ``n_kept_tokens``, ``gold_ranks``
    (1-based ranks of gold chunks among all chunks).
    """
    kept, used = [], 0
    for j in order:
        if used >= budget:
            break
        c = chunks[j]
        if used + c.n_tokens > budget:
            text, n = token_pieces(c.text, tokenizer, budget - used)[0]
            c = Chunk(text, n, c.sources)
        kept.append(c)
        used += c.n_tokens
    gold = set(example.gold)
    docs = [Passage(pid=f"chunk{j}", title="", text=c.text) for j, c in zip(order, kept)]
    new_gold = [k for k, c in enumerate(kept, start=1) if gold & set(c.sources)]
    info = {
        "n_chunks": len(chunks),
        "n_kept_chunks": len(kept),
        "n_kept_tokens": used,
        "gold_ranks": [r for r, j in enumerate(order, start=1) if gold & set(chunks[j].sources)],
    }
    return replace(example, docs=docs, gold=new_gold, supporting={}), info


def build_rag_example(
    example: RetrievalExample, tokenizer, retriever: Retriever, budget: int, chunk_tokens: int = 2048
) -> tuple[RetrievalExample, dict]:
    """:func:`rank_chunks` then :func:`cut_to_budget`."""
    chunks, order = rank_chunks(example, tokenizer, retriever, chunk_tokens)
    return cut_to_budget(example, chunks, order, tokenizer, budget)
