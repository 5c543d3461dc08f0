"""Context-parallel (CP) layout of a packed sequence: zigzag chunks per document.

A packed sequence of ``T`` tokens holds several documents with boundaries ``cu_seqlens`` (int32 ``[n_docs + 1]``,
``cu_seqlens[0] == 0``, ``cu_seqlens[-1] == T``). For CP size ``C`` every document is padded at its end to a
multiple of ``2C`` tokens and cut into ``2C`` equal chunks; rank ``r`` keeps chunks ``r`` and ``2C - 1 - r`` of
every document, documents in order (the Megatron / Transformer Engine THD convention). Every rank therefore holds
the same number of tokens, ``T_local = cu_seqlens_padded[-1] / C``, and ``local_cu_seqlens = cu_seqlens_padded / C``.

Padding tokens sit at the end of their document, so causal attention of real tokens never sees them; the caller
must drop them from the loss with :attr:`CPMeta.valid` (``shard`` of labels with ``pad_value=-100`` does that).

Example, ``cu_seqlens = [0, 3, 4]`` and ``C = 2`` (both documents padded to 4 tokens, chunks of 1 token)::

    rank 0: doc 0 positions [0, 3], doc 1 positions [0, 3]     (position 3 of doc 0 and 1..3 of doc 1 are padding)
    rank 1: doc 0 positions [1, 2], doc 1 positions [1, 2]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

__all__ = [
    "CPMeta",
    "TokenInfo",
    "make_cp_meta",
    "pad_cu_seqlens",
    "padded_cu_seqlens",
    "shard",
    "unshard",
    "zigzag_positions",
]


def _check_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Validate ``cu_seqlens`` and return it as int64 on CPU-or-its-device."""
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.ndim != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"cu_seqlens must be a 1-D tensor [n_docs + 1], got {cu_seqlens!r}")
    if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool:
        raise ValueError(f"cu_seqlens must be an integer tensor, got dtype {cu_seqlens.dtype}")
    cu = cu_seqlens.long()
    if int(cu[0]) != 0 or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"cu_seqlens must start at 0 and be non-decreasing, got {cu_seqlens.tolist()}")
    return cu


def _check_cp(cp_size: int, cp_rank: int | None = None) -> None:
    if cp_size < 1:
        raise ValueError(f"cp_size must be >= 1, got {cp_size}")
    if cp_rank is not None and not 0 <= cp_rank < cp_size:
        raise ValueError(f"cp_rank must be in [0, {cp_size}), got {cp_rank}")


def pad_cu_seqlens(cu_seqlens: torch.Tensor, multiple: int) -> torch.Tensor:
    """Boundaries after padding every document to a multiple of ``multiple`` tokens; int32 ``[n_docs + 1]``."""
    cu = _check_cu_seqlens(cu_seqlens)
    lengths = cu[1:] - cu[:-1]
    padded = (lengths + multiple - 1) // multiple * multiple
    return torch.cat([cu.new_zeros(1), padded.cumsum(0)]).to(torch.int32)


def padded_cu_seqlens(cu_seqlens: torch.Tensor, cp_size: int) -> torch.Tensor:
    """Global padded boundaries for CP size ``cp_size`` (documents padded to a multiple of ``2 * cp_size``)."""
    _check_cp(cp_size)
    return pad_cu_seqlens(cu_seqlens, 2 * cp_size)


def zigzag_positions(cu_seqlens: torch.Tensor, cp_size: int, cp_rank: int) -> dict[str, torch.Tensor]:
    """Per-token descriptors of the tokens rank ``cp_rank`` keeps, in local order.

    Returns int64 ``[T_local]`` tensors: ``doc_ids`` (document index), ``positions`` (position within the padded
    document, ``>= length`` on padding), ``global_index`` (index in the padded packed sequence), ``source_index``
    (index in the original packed sequence, ``-1`` on padding), and bool ``valid`` (False on padding).
    """
    _check_cp(cp_size, cp_rank)
    cu = _check_cu_seqlens(cu_seqlens)
    cu_pad = padded_cu_seqlens(cu, cp_size).to(cu.device).long()
    chunk = (cu_pad[1:] - cu_pad[:-1]) // (2 * cp_size)  # [n_docs] tokens per chunk
    doc_ids = torch.repeat_interleave(torch.arange(chunk.numel(), device=cu.device), 2 * chunk)
    local_start = torch.repeat_interleave(cu_pad[:-1] // cp_size, 2 * chunk)
    offset = torch.arange(doc_ids.numel(), device=cu.device) - local_start  # [0, 2 * chunk) within the doc
    c = chunk[doc_ids]
    first = offset < c
    positions = torch.where(first, cp_rank * c + offset, (2 * cp_size - 1 - cp_rank) * c + offset - c)
    length = (cu[1:] - cu[:-1])[doc_ids]
    valid = positions < length
    return {
        "doc_ids": doc_ids,
        "positions": positions,
        "global_index": cu_pad[doc_ids] + positions,
        "source_index": torch.where(valid, cu[doc_ids] + positions, torch.full_like(positions, -1)),
        "valid": valid,
    }


def _check_length(x: torch.Tensor, dim: int, expected: int, what: str) -> None:
    if x.shape[dim] != expected:
        raise ValueError(f"{what}: dimension {dim} of shape {tuple(x.shape)} must be {expected}")


def shard(
    x: torch.Tensor, cu_seqlens: torch.Tensor, cp_size: int, cp_rank: int, dim: int = 0, pad_value: float = 0
) -> torch.Tensor:
    """The tokens of ``x`` that rank ``cp_rank`` keeps, with padding filled by ``pad_value``.

    ``x`` holds the original packed sequence along ``dim`` (length ``cu_seqlens[-1]``); the result has
    ``T_local = cu_seqlens_padded[-1] / cp_size`` along ``dim``. Differentiable in ``x``.
    """
    cu = _check_cu_seqlens(cu_seqlens)
    _check_length(x, dim, int(cu[-1]), "shard(x)")
    info = zigzag_positions(cu.to(x.device), cp_size, cp_rank)
    out = x.index_select(dim, info["source_index"].clamp(min=0))
    view = [1] * x.ndim
    view[dim] = -1
    return out.masked_fill(~info["valid"].view(view), pad_value)


def unshard(
    pieces: Sequence[torch.Tensor], cu_seqlens: torch.Tensor, dim: int = 0, padded: bool = False
) -> torch.Tensor:
    """Inverse of :func:`shard`: ``pieces[r]`` is rank ``r``'s local tensor (``len(pieces)`` is the CP size).

    Returns the padded packed sequence (length ``cu_seqlens_padded[-1]`` along ``dim``) when ``padded``, else the
    original one (length ``cu_seqlens[-1]``, padding dropped). Differentiable in the pieces.
    """
    cp_size = len(pieces)
    cu = _check_cu_seqlens(cu_seqlens).to(pieces[0].device)
    cu_pad = padded_cu_seqlens(cu, cp_size).long().to(cu.device)
    index = torch.cat([zigzag_positions(cu, cp_size, r)["global_index"] for r in range(cp_size)])
    for r, piece in enumerate(pieces):
        _check_length(piece, dim, int(cu_pad[-1]) // cp_size, f"unshard(pieces[{r}])")
    full = torch.cat(list(pieces), dim=dim)
    inverse = torch.empty_like(index)
    inverse[index] = torch.arange(index.numel(), device=index.device)
    if not padded:
        lengths = cu[1:] - cu[:-1]
        doc = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu.device), lengths)
        inverse = inverse[cu_pad[doc] + torch.arange(doc.numel(), device=cu.device) - cu[doc]]
    return full.index_select(dim, inverse)


@dataclass(frozen=True, eq=False)
class TokenInfo:
    """What attention needs to know about a set of tokens: int64 ``doc_ids``, ``positions`` and bool ``valid``,
    each ``[T]``. ``mask_for`` gives the document mask between two such sets."""

    doc_ids: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor

    def __len__(self) -> int:
        return self.doc_ids.numel()

    def slice(self, start: int, end: int) -> TokenInfo:
        return TokenInfo(self.doc_ids[start:end], self.positions[start:end], self.valid[start:end])

    def mask_for(self, keys: TokenInfo, causal: bool = True) -> torch.Tensor:
        """Bool ``[T_q, T_k]``: True where query ``i`` (self) may attend key ``j``: same document, key not
        padding and, when ``causal``, key position <= query position."""
        mask = (self.doc_ids[:, None] == keys.doc_ids[None, :]) & keys.valid[None, :]
        if causal:
            mask &= keys.positions[None, :] <= self.positions[:, None]
        return mask

    @staticmethod
    def cat(parts: Sequence[TokenInfo]) -> TokenInfo:
        return TokenInfo(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(TokenInfo)))


@dataclass(frozen=True, eq=False)
class CPMeta:
    """Layout metadata of one packed sequence on one CP rank; build it with :func:`make_cp_meta`.

    Tensors (all on one device): ``cu_seqlens`` int32 ``[n_docs + 1]`` (original), ``cu_seqlens_padded`` int32
    ``[n_docs + 1]`` (global, padded to multiples of ``2 * cp_size``), ``local_cu_seqlens`` int32 ``[n_docs + 1]``
    (this rank's boundaries, ``cu_seqlens_padded / cp_size``), and per rank ``s`` and local token ``t`` the int64
    ``[cp_size, T_local]`` tables ``doc_ids_all``, ``positions_all``, ``global_index_all`` and the bool ``valid_all``.
    """

    cp_size: int
    cp_rank: int
    cu_seqlens: torch.Tensor
    cu_seqlens_padded: torch.Tensor
    local_cu_seqlens: torch.Tensor
    doc_ids_all: torch.Tensor
    positions_all: torch.Tensor
    global_index_all: torch.Tensor
    valid_all: torch.Tensor

    @property
    def num_local_tokens(self) -> int:
        return self.doc_ids_all.shape[1]

    @property
    def position_ids(self) -> torch.Tensor:
        """int64 ``[T_local]``: position of each local token within its document (feed to RoPE)."""
        return self.positions_all[self.cp_rank]

    @property
    def doc_ids(self) -> torch.Tensor:
        """int64 ``[T_local]``: document index of each local token."""
        return self.doc_ids_all[self.cp_rank]

    @property
    def global_index(self) -> torch.Tensor:
        """int64 ``[T_local]``: index of each local token in the padded packed sequence."""
        return self.global_index_all[self.cp_rank]

    @property
    def valid(self) -> torch.Tensor:
        """bool ``[T_local]``: False on padding tokens; multiply the per-token loss by it."""
        return self.valid_all[self.cp_rank]

    def tokens(self, rank: int | None = None) -> TokenInfo:
        """Token descriptors of rank ``rank``'s local tokens (this rank when None)."""
        r = self.cp_rank if rank is None else rank
        return TokenInfo(self.doc_ids_all[r], self.positions_all[r], self.valid_all[r])

    def all_tokens(self) -> TokenInfo:
        """Descriptors of all ``cp_size * T_local`` tokens in rank-major order (rank 0's tokens first)."""
        return TokenInfo(self.doc_ids_all.flatten(), self.positions_all.flatten(), self.valid_all.flatten())

    def to(self, device: torch.device | str) -> CPMeta:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return CPMeta(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()})


def make_cp_meta(
    cu_seqlens: torch.Tensor, cp_size: int, cp_rank: int, device: torch.device | str | None = None
) -> CPMeta:
    """Build the :class:`CPMeta` of rank ``cp_rank`` for a packed sequence with boundaries ``cu_seqlens``."""
    _check_cp(cp_size, cp_rank)
    cu = _check_cu_seqlens(cu_seqlens).to(device or cu_seqlens.device)
    cu_pad = padded_cu_seqlens(cu, cp_size)
    per_rank = [zigzag_positions(cu, cp_size, r) for r in range(cp_size)]
    table = {k: torch.stack([p[k] for p in per_rank]) for k in ("doc_ids", "positions", "global_index", "valid")}
    return CPMeta(
        cp_size=cp_size,
        cp_rank=cp_rank,
        cu_seqlens=cu.to(torch.int32),
        cu_seqlens_padded=cu_pad,
        local_cu_seqlens=(cu_pad // cp_size).to(torch.int32),
        doc_ids_all=table["doc_ids"],
        positions_all=table["positions"],
        global_index_all=table["global_index"],
        valid_all=table["valid"],
    )
