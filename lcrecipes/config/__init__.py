"""Recipe configs: typed schema, YAML with ``defaults:`` inheritance, dotted overrides, validation."""

from lcrecipes.config.loader import ConfigError, Recipe, check, load_recipe, parse_overrides, save_resolved
from lcrecipes.config.schema import (
    CheckpointConfig,
    LaunchConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    RecipeConfig,
    StrategyConfig,
    TrainConfig,
)
from lcrecipes.eval.suite import EvalConfig

__all__ = ["CheckpointConfig", "ConfigError", "EvalConfig", "LaunchConfig", "ModelConfig", "OptimConfig",
           "ParallelConfig", "Recipe", "RecipeConfig", "StrategyConfig", "TrainConfig", "check", "load_recipe",
           "parse_overrides", "save_resolved"]
