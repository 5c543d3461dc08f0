"""Training backends (``parallel.backend``); importing this package registers the built-in ones.

Heavy frameworks (DeepSpeed, Megatron-Core) are imported inside each backend's ``setup``, not here.
"""

from lcrecipes.train.backends import deepspeed, megatron  # noqa: F401  (register "deepspeed", "megatron")
from lcrecipes.train.backends.base import BACKENDS, Backend, StepResult, get_backend, register_backend

__all__ = ["BACKENDS", "Backend", "StepResult", "get_backend", "register_backend"]
