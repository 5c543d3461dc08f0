"""Eval tasks: one loader per benchmark file format, registered by name (see :mod:`.base`)."""

from lcrecipes.eval.tasks import helmet_kilt, infinitebench, longbench_v2, loong, synthetic  # noqa: F401
from lcrecipes.eval.tasks.base import (
    IN_DOMAIN,
    OUT_OF_DOMAIN,
    TASKS,
    EvalItem,
    SchemaError,
    Task,
    get_task,
    iter_records,
    register,
)

__all__ = [
    "IN_DOMAIN",
    "OUT_OF_DOMAIN",
    "TASKS",
    "EvalItem",
    "SchemaError",
    "Task",
    "get_task",
    "iter_records",
    "register",
]
