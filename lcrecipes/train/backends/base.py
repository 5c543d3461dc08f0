"""Training backends: one file each, a small base class and a string-keyed registry (``parallel.backend``).

A backend owns the model, the optimizer and the parallel wrapping, and nothing else: the loop
(``lcrecipes.train.loop``) owns data, LR schedule, loss normalisation, logging, eval and the checkpoint protocol.

Contract (every method is collective: all ranks call it in the same order):

- ``__init__(recipe, mesh, device, attention)``: cheap; ``attention`` names the CP attention to run.
- ``setup()``: build model + optimizer from ``recipe`` on ``mesh`` (weights from ``model.hf_path`` or a seeded
  random init that is the same for any world size).
- ``forward_backward(micro_batches, weight)``: for each micro-batch, loss sum over its target tokens
  (:func:`~lcrecipes.train.loss.token_loss_sum`) times ``weight`` (= 1 / global target tokens of the step),
  backpropagated so that the gradient summed over all ranks is the gradient of the normalised step loss.
  Returns the unweighted local loss sum (nats).
- ``optimizer_step(lr)``: clip to ``optim.grad_clip`` and update at learning rate ``lr``; returns the global
  gradient norm before clipping.
- ``train_step(...)`` = both, returning :class:`StepResult`.
- ``eval_loss(mb)``: local loss sum (nats) without gradients.
- ``save(dir)`` / ``load(dir)``: the native model + optimizer state inside ``dir`` (the loop adds state.json).
- ``full_grads()``: after ``forward_backward`` and before ``optimizer_step``, the full fp32 gradient of every
  parameter by HF name (for checks against a single-process reference; may be slow).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from lcrecipes.config import Recipe
from lcrecipes.train.batch import MicroBatch
from lcrecipes.train.mesh import Mesh


@dataclass
class StepResult:
    """One optimizer step on one rank: ``loss_sum`` (nats, local, unweighted), ``target_tokens`` (local),
    ``grad_norm`` (global, before clipping)."""

    loss_sum: float
    target_tokens: int
    grad_norm: float


class Backend:
    """Base class; subclasses set ``name`` and fill the methods of the module contract."""

    name: ClassVar[str] = ""

    def __init__(self, recipe: Recipe, mesh: Mesh, device: torch.device, attention: str):
        """``attention``: the CP attention registry name the model runs (``lcrecipes.parallel.attention``)."""
        self.recipe, self.cfg, self.mesh, self.device, self.attention = recipe, recipe.cfg, mesh, device, attention

    def setup(self) -> None:
        raise NotImplementedError

    def forward_backward(self, micro_batches: Sequence[MicroBatch], weight: float) -> float:
        raise NotImplementedError

    def optimizer_step(self, lr: float) -> float:
        raise NotImplementedError

    def train_step(self, micro_batches: Sequence[MicroBatch], weight: float, lr: float) -> StepResult:
        loss_sum = self.forward_backward(micro_batches, weight)
        grad_norm = self.optimizer_step(lr)
        return StepResult(loss_sum, sum(mb.target_tokens for mb in micro_batches), grad_norm)

    def eval_loss(self, mb: MicroBatch) -> float:
        raise NotImplementedError

    def save(self, ckpt_dir: Path) -> None:
        raise NotImplementedError

    def load(self, ckpt_dir: Path) -> None:
        raise NotImplementedError

    def full_grads(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def full_params(self) -> dict[str, torch.Tensor]:
        """Full fp32 parameters by HF name (collective)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the model and optimizer (preflight builds two backends one after the other)."""


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: add ``cls`` under ``cls.name``."""
    if not cls.name or cls.name in BACKENDS:
        raise ValueError(f"backend class {cls.__name__} needs a unique non-empty name, got {cls.name!r}")
    BACKENDS[cls.name] = cls
    return cls


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name`` (imports the built-in backends first)."""
    import lcrecipes.train.backends  # noqa: F401  (registers the built-in backends)

    if name not in BACKENDS:
        raise KeyError(f"unknown training backend {name!r} (parallel.backend); registered: {sorted(BACKENDS)}")
    return BACKENDS[name]
