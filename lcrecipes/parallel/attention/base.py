"""Base class of the context-parallel attention implementations (one subclass per file, see ``registry``).

Core call, independent of transformers and Megatron-Core::

    out = impl(q, k, v, meta, group, scale=None, causal=True)

- ``q``: ``[T_local, H, D]``, this rank's tokens in the zigzag CP layout (see ``lcrecipes.parallel.layout``).
- ``k``, ``v``: ``[T_local, H_kv, D]``, ``H % H_kv == 0`` (GQA: query head ``h`` uses kv head ``h // (H / H_kv)``).
- ``meta``: :class:`~lcrecipes.parallel.layout.CPMeta` of this rank, on the device of ``q``.
- ``group``: the CP process group (None: the default group; ignored when ``meta.cp_size == 1``).
- ``scale``: softmax scale, ``D ** -0.5`` when None. ``causal``: causal within each document (else
  bidirectional within each document). Attention never crosses a document boundary nor sees padding keys.
- returns ``out``: ``[T_local, H, D]`` in the dtype of ``q``; differentiable in ``q``, ``k``, ``v``.

HF layout ``[b, H, s, D]`` with ``b == 1`` maps to it by ``q[0].transpose(0, 1)``; Megatron ``[s, b, H, D]`` by
``q[:, 0]``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.distributed as dist

from lcrecipes.parallel.comm import check_group
from lcrecipes.parallel.layout import CPMeta


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: CPMeta) -> None:
    """Raise a ValueError naming the offending shape/device when the inputs do not fit the core call."""
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(f"q, k, v must be [tokens, heads, head_dim]; got {q.shape}, {k.shape}, {v.shape}")
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"k and v must be [{q.shape[0]}, kv_heads, {q.shape[2]}]; got {k.shape}, {v.shape}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})")
    if q.shape[0] != meta.num_local_tokens:
        raise ValueError(f"q has {q.shape[0]} tokens but CPMeta has {meta.num_local_tokens} local tokens")
    if meta.doc_ids_all.device != q.device:
        raise ValueError(f"CPMeta is on {meta.doc_ids_all.device}, q on {q.device}; use meta.to(q.device)")


class CPAttention:
    """One attention implementation; subclasses set ``name`` and fill :meth:`forward`."""

    name: ClassVar[str] = ""

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        meta: CPMeta,
        group: dist.ProcessGroup | None = None,
        *,
        scale: float | None = None,
        causal: bool = True,
    ) -> torch.Tensor:
        check_inputs(q, k, v, meta)
        check_group(meta, group)
        scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
        return self.forward(q, k, v, meta, group, scale=scale, causal=causal)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        meta: CPMeta,
        group: dist.ProcessGroup | None,
        *,
        scale: float,
        causal: bool,
    ) -> torch.Tensor:
        """Checked inputs (shapes in the module docstring) -> ``[T_local, H, D]``."""
        raise NotImplementedError
