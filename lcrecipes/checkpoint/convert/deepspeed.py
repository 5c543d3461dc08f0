"""DeepSpeed ZeRO checkpoints (stages 1-3) of a HF causal LM, read through DeepSpeed's own ``zero_to_fp32``.

Layout: ``<dir>/<tag>/{zero_pp_rank_*_model_states.pt, *_optim_states.pt}`` (``engine.save_checkpoint``), the tag
from ``--tag``, ``<dir>/latest`` or the only tag folder present (our trainer's ``native``), plus the model
architecture in ``<dir>/model_spec.json`` or a HF ``config.json``. ``zero_to_fp32`` runs in lazy mode (each fp32
tensor is gathered from the memory-mapped partitions only when its block is written) and every ``torch.load`` it
makes is forced to ``weights_only=True`` with DeepSpeed's own checkpoint classes allow-listed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from lcrecipes.checkpoint.convert.base import SPEC_FILE, Block, ConvertError, Reader, read_spec, register_reader
from lcrecipes.checkpoint.convert.hf import block_names, check_hf_shapes
from lcrecipes.checkpoint.safe_load import load_weights_only
from lcrecipes.models import ModelSpec, hf_config_from_spec, spec_from_hf_dir

log = logging.getLogger(__name__)


class _WeightsOnlyTorch:
    """``torch`` as ``zero_to_fp32`` sees it during a conversion: every attribute is torch's, but ``load`` always
    uses ``weights_only=True`` (DeepSpeed's checkpoint classes allow-listed, ``lcrecipes.checkpoint.safe_load``)."""

    def __getattr__(self, name: str):
        return getattr(torch, name)

    @staticmethod
    def load(f, *args, weights_only: bool | None = None, **kwargs):
        return load_weights_only(f, *args, error=ConvertError, **kwargs)


@contextlib.contextmanager
def weights_only_zero_to_fp32() -> Iterator:
    """Yield DeepSpeed's ``zero_to_fp32`` module with its ``torch.load`` calls forced to ``weights_only=True``."""
    from deepspeed.utils import zero_to_fp32

    original = zero_to_fp32.torch
    zero_to_fp32.torch = _WeightsOnlyTorch()
    try:
        yield zero_to_fp32
    finally:
        zero_to_fp32.torch = original


def find_tag(path: Path, tag: str | None) -> str:
    """``tag``, else the ``latest`` file's, else the only sub-folder holding ``*_optim_states.pt``."""
    if tag:
        return tag
    if (path / "latest").is_file():
        return (path / "latest").read_text().strip()
    tags = sorted(d.name for d in path.iterdir() if d.is_dir() and any(d.glob("*_optim_states.pt")))
    if len(tags) != 1:
        raise ConvertError(f"{path}: expected one DeepSpeed tag folder with *_optim_states.pt, found {tags or 'none'} "
                           "(pass --tag)")
    return tags[0]


def read_ds_spec(path: Path) -> ModelSpec:
    if (path / SPEC_FILE).is_file():
        return read_spec(path)
    if (path / "config.json").is_file():
        try:
            return spec_from_hf_dir(path)
        except KeyError as e:
            raise ConvertError(f"{path / 'config.json'}: {e}") from e
    raise ConvertError(f"{path}: no {SPEC_FILE} or config.json describing the model architecture")


@register_reader
class DeepSpeedReader(Reader):
    format = "deepspeed"

    def __init__(self, path: str | Path, tag: str | None = None, **options) -> None:
        super().__init__(path)
        self.spec = read_ds_spec(self.path)
        self.tag = find_tag(self.path, tag)
        if not (self.path / self.tag).is_dir():
            raise ConvertError(f"{self.path / self.tag}: no such DeepSpeed tag folder")
        with weights_only_zero_to_fp32() as z2f:
            try:
                self.state = z2f.get_fp32_state_dict_from_zero_checkpoint(str(self.path), tag=self.tag, lazy_mode=True)
            except (ValueError, FileNotFoundError) as e:  # e.g. a missing *_optim_states.pt shard
                raise ConvertError(f"{self.path / self.tag}: {e}") from e
        check_hf_shapes(str(self.path / self.tag), self.spec, {k: tuple(v.shape) for k, v in self.state.items()})

    def _tensor(self, name: str) -> Tensor:
        t = self.state[name]
        return t.contiguous().clone() if isinstance(t, Tensor) else t.contiguous()

    def blocks(self) -> Iterator[Block]:
        for names in block_names(self.spec):
            yield {n: self._tensor(n) for n in names}

    def logits(self, input_ids: Tensor) -> Tensor:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(hf_config_from_spec(self.spec), dtype=torch.float32)
        state = {n: t for block in self.blocks() for n, t in block.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad = [k for k in missing if not (self.spec.tie_embeddings and k == "lm_head.weight")] + list(unexpected)
        if bad:
            raise ConvertError(f"{self.path}: state dict does not fit the model: {bad[:5]}")
        if self.spec.tie_embeddings:
            model.tie_weights()
        with torch.no_grad():
            return model.eval()(input_ids).logits.float()

