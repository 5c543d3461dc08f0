"""``state.json``: everything a resumed run needs besides the backend's native tensors.

Keys: ``format`` (1), ``step`` (optimizer steps done), ``tokens`` (target tokens trained on so far),
``config_hash`` (of the resolved recipe), ``backend``, ``world_size``, ``sampler`` (the data sampler's
``state_dict()``), ``rng`` (one :func:`~lcrecipes.checkpoint.rng.capture_rng` dict per rank, in rank order),
``extra`` (free-form, e.g. the last eval loss) and ``files`` (manifest of every other file, see ``verify``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lcrecipes.checkpoint.verify import STATE_FILE, CheckpointError
from lcrecipes.utils.io import atomic_write_text

FORMAT = 1


@dataclass
class TrainState:
    """The loop's own resumable state (the backend saves model and optimizer itself)."""

    step: int = 0
    tokens: int = 0
    config_hash: str = ""
    backend: str = ""
    world_size: int = 1
    sampler: dict = field(default_factory=dict)
    rng: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def to_json(self, files: dict[str, dict]) -> str:
        return json.dumps({"format": FORMAT, **asdict(self), "files": files}, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: d[k] for k in names if k in d})


def write_state(ckpt_dir: Path, state: TrainState, files: dict[str, dict]) -> None:
    atomic_write_text(Path(ckpt_dir) / STATE_FILE, state.to_json(files))


def read_state(ckpt_dir: str | Path) -> dict:
    """The parsed ``state.json`` of ``ckpt_dir`` (raises CheckpointError naming the file when absent or bad)."""
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {ckpt_dir} is not a complete lcrecipes checkpoint")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
    missing = [k for k in ("format", "step", "files", "rng", "sampler") if k not in data]
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {missing}")
    if data["format"] != FORMAT:
        raise CheckpointError(f"{path}: format {data['format']}, this version reads format {FORMAT}")
    return data
