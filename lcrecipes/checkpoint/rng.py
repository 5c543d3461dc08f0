"""Capture and restore every random number generator a rank uses, as JSON-able values (for ``state.json``).

Python's ``random``, NumPy's legacy global generator, torch's CPU generator and, when present, every CUDA
device's generator. Byte states are base64 strings. :func:`seed_host_rngs` seeds the first two (torch's is seeded
where the model is built, identically on every rank).
"""

from __future__ import annotations

import base64
import random

import numpy as np
import torch


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def seed_host_rngs(seed: int, rank: int) -> None:
    """Seed Python's ``random`` and NumPy's legacy global generator with ``seed + rank``, so that two identical
    runs draw (and save in ``state.json``) identical values."""
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)


def capture_rng() -> dict:
    """This process's RNG states: ``{"python": [...], "numpy": [...], "torch": b64, "cuda": [b64, ...]}``."""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": [version, list(state), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
        "cuda": [],
    }
    if torch.cuda.is_available():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng(states: dict) -> None:
    """Inverse of :func:`capture_rng`. CUDA states are restored only when as many devices are present."""
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(states["torch"]))
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([_unb64(s) for s in cuda])
