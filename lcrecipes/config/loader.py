"""Load a recipe: ``defaults:`` parents first, then the file, then ``section.key=value`` overrides.

Every error is a ``ConfigError`` that names the key and where its value came from (file or command line).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lcrecipes.config.schema import RecipeConfig

CLI = "command line"


class ConfigError(ValueError):
    """A recipe problem: ``where`` is a file path or 'command line', ``key`` the dotted config key."""

    def __init__(self, where: str, key: str, message: str):
        self.where, self.key, self.message = where, key, message
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


@dataclass
class Recipe:
    """A validated recipe and where each key's value came from."""

    cfg: RecipeConfig
    path: Path | None
    sources: dict[str, str] = field(default_factory=dict)  # dotted key -> file or 'command line'

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.structured(self.cfg))

    def config_hash(self) -> str:
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()[:16]


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(str(path), "", "recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}", "", f"not valid YAML: {getattr(e, 'problem', e)}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), "", f"not UTF-8 text (byte {e.start})") from None
    except RecursionError:
        raise ConfigError(str(path), "", "nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"a recipe must be a mapping, got {type(data).__name__}")
    return data


def _layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The recipe and its ``defaults:`` ancestors, parents first (paths relative to the naming file)."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(str(path), "defaults", f"cycle in defaults: {chain}")
    data = _read_yaml(path)
    parents = data.pop("defaults", []) or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(str(path), "defaults", "must be a list of recipe paths")
    out: list[tuple[Path, dict]] = []
    for parent in parents:
        ppath = path.parent / (parent if parent.endswith((".yaml", ".yml")) else f"{parent}.yaml")
        out += _layers(ppath, (*seen, path))
    return out + [(path, data)]


def _leaves(d: Any, prefix: str = "") -> list[str]:
    if not isinstance(d, dict) or not d:
        return [prefix] if prefix else []
    out = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out += [key] if k in ("rope_scaling",) else _leaves(v, key)
    return out


def _merge(base: DictConfig, layer: dict, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except (OmegaConfBaseException, TypeError, RecursionError) as e:  # TypeError: e.g. a list onto a dict field
        key = getattr(e, "full_key", "") or _culprit(base, layer)
        msg = str(e).splitlines()[0] if not isinstance(e, RecursionError) else "nested too deeply (recursive alias?)"
        if "not in struct" in msg or "Key '" in msg and "not in" in msg:
            msg = "unknown key"
        raise ConfigError(where, key, msg) from None


def _culprit(base: DictConfig, layer: dict, prefix: tuple = ()) -> str:
    """The dotted key of the first value of ``layer`` that fails to merge on its own ("" if none does)."""
    for k, v in layer.items():
        nested: Any = v
        for part in reversed((*prefix, k)):
            nested = {part: nested}
        try:
            OmegaConf.merge(base, nested)
        except (OmegaConfBaseException, TypeError, RecursionError) as e:
            deep = isinstance(v, dict) and len(prefix) < 4 and not isinstance(e, RecursionError)
            return (_culprit(base, v, (*prefix, k)) if deep else "") or ".".join(map(str, (*prefix, k)))
    return ""


def parse_overrides(overrides: list[str]) -> list[tuple[str, dict]]:
    """``a.b=v`` strings -> (text, nested dict) with YAML-typed values; a malformed one is a ConfigError."""
    out = []
    for text in overrides:
        key, sep, raw = text.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(CLI, key or text, f"override {text!r} is not of the form section.key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        out.append((text, nested))
    return out


def load_recipe(path: str | Path | None, overrides: list[str] | None = None, validate: bool = True) -> Recipe:
    """Resolve a recipe file (or the schema defaults when ``path`` is None) with overrides, then validate."""
    cfg = OmegaConf.structured(RecipeConfig)
    sources: dict[str, str] = {}
    layers = _layers(Path(path)) if path is not None else []
    for lpath, data in layers:
        cfg = _merge(cfg, data, str(lpath))
        sources.update({k: str(lpath) for k in _leaves(data)})
    for text, nested in parse_overrides(overrides or []):
        cfg = _merge(cfg, nested, f"{CLI} ({text})")
        sources.update({k: CLI for k in _leaves(nested)})
    try:
        obj: RecipeConfig = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        raise ConfigError(sources.get(key, str(path)), key, str(e).splitlines()[0]) from None
    recipe = Recipe(cfg=obj, path=Path(path) if path else None, sources=sources)
    if validate:
        check(recipe)
    return recipe


def check(recipe: Recipe) -> None:
    """Raise a ConfigError for the first problem (all problems are listed in its message)."""
    problems = recipe.cfg.problems()
    if not problems:
        return
    lines = [f"{_where(recipe, k)}: {k}: {m}" for k, m in problems]
    key, msg = problems[0]
    err = ConfigError(_where(recipe, key), key, msg)
    err.args = ("\n".join(lines),)
    raise err


def _where(recipe: Recipe, key: str) -> str:
    if key in recipe.sources:
        return recipe.sources[key]
    section = key.split(".")[0]
    hits = [src for k, src in recipe.sources.items() if k.split(".")[0] == section]
    return hits[-1] if hits else str(recipe.path or "defaults")


def save_resolved(recipe: Recipe, run_dir: str | Path) -> Path:
    """Write ``config.yaml`` and ``meta.json`` (config hash, git commit, package versions) into the run dir."""
    from lcrecipes.utils.io import atomic_write_text
    from lcrecipes.utils.provenance import environment_info

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", recipe.to_yaml())
    meta = {"recipe": str(recipe.path) if recipe.path else None, "config_hash": recipe.config_hash(),
            **environment_info()}
    atomic_write_text(run_dir / "meta.json", json.dumps(meta, indent=2) + "\n")
    return run_dir / "config.yaml"
