"""The RAG baseline: chunking, retrievers (registry), and contexts cut to a token budget."""

from lcrecipes.eval.rag import bm25, dense  # noqa: F401
from lcrecipes.eval.rag.base import RETRIEVERS, Retriever, get_retriever, register
from lcrecipes.eval.rag.chunking import Chunk, build_rag_example, chunk_passages, cut_to_budget, rank_chunks

__all__ = [
    "RETRIEVERS",
    "Chunk",
    "Retriever",
    "build_rag_example",
    "chunk_passages",
    "cut_to_budget",
    "get_retriever",
    "rank_chunks",
    "register",
]
