"""Learning rate per optimizer step: linear warmup, then cosine / linear decay to ``min_lr``, or constant."""

from __future__ import annotations

import math

from lcrecipes.config.schema import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """LR for optimizer step ``step`` (0-based: the first update uses ``lr_at(0)``).

    Warmup: ``lr * (step + 1) / warmup_steps`` for ``step < warmup_steps``; then the decay goes from ``lr`` at
    the end of warmup to ``min_lr`` at ``steps - 1`` (cosine or linear), or stays at ``lr`` (constant).
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(cfg.steps - 1 - cfg.warmup_steps, 1)
    frac = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    if cfg.schedule == "linear":
        decay = 1.0 - frac
    elif cfg.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * frac))
    else:
        raise ValueError(f"train.schedule={cfg.schedule!r}: must be cosine | linear | constant")
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * decay
