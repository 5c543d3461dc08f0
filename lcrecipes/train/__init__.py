"""Training: one loop (step, eval, save, log) over pluggable backends (``backends/``: deepspeed, ...).

``train(recipe)`` runs a recipe on this rank (torchrun, srun or a single process); ``preflight(recipe)`` checks
the recipe's CP against CP=1 on its own data. Heavy frameworks are imported only when a backend is set up.
"""

from lcrecipes.train.preflight import PreflightReport, preflight
from lcrecipes.train.run import train

__all__ = ["PreflightReport", "preflight", "train"]
