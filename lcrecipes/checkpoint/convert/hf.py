"""Hugging Face checkpoints: ``config.json`` + sharded safetensors with ``model.safetensors.index.json``.

The writer streams: the shards are planned from the spec, and each tensor is cast and written to its place in its
shard as soon as its block arrives (``safetensors_out``), so memory holds one block; a tensor the source stores as
it is comes as file pieces (``Reader.stored_blocks``) and is copied file to file. Only safetensors are read.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from lcrecipes.checkpoint.convert.base import (
    Block,
    ConvertError,
    Reader,
    StoredBlock,
    Writer,
    check_shape,
    find_tokenizer_dir,
    register_reader,
    register_writer,
    spec_hint,
)
from lcrecipes.checkpoint.convert.safetensors_out import ShardedSafetensorsWriter
from lcrecipes.models import ModelSpec, hf_config_from_spec, spec_from_hf_dir

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
                   "lcrecipes_tokenizer.json")
GENERATION_CONFIG = "generation_config.json"
# HF causal-LM class per family (checked against transformers' auto mapping by the tests).
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
DEFAULT_SHARD_BYTES = 2 * 1024**3


def hf_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor of the HF model, in block order, with its shape (no ``lm_head`` when tied)."""
    hid, ffn = spec.hidden_size, spec.ffn_hidden_size
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (spec.vocab_size, hid)}
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (hid,), p + "self_attn.q_proj.weight": (spec.q_size, hid),
                    p + "self_attn.k_proj.weight": (spec.kv_size, hid),
                    p + "self_attn.v_proj.weight": (spec.kv_size, hid)})
        if spec.qkv_bias:
            out.update({p + "self_attn.q_proj.bias": (spec.q_size,), p + "self_attn.k_proj.bias": (spec.kv_size,),
                        p + "self_attn.v_proj.bias": (spec.kv_size,)})
        out.update({p + "self_attn.o_proj.weight": (hid, spec.q_size), p + "post_attention_layernorm.weight": (hid,),
                    p + "mlp.gate_proj.weight": (ffn, hid), p + "mlp.up_proj.weight": (ffn, hid),
                    p + "mlp.down_proj.weight": (hid, ffn)})
    out["model.norm.weight"] = (hid,)
    if not spec.tie_embeddings:
        out["lm_head.weight"] = (spec.vocab_size, hid)
    return out


def block_names(spec: ModelSpec) -> list[list[str]]:
    """HF names grouped into blocks: embedding, each layer, final norm (+ lm_head)."""
    names = list(hf_shapes(spec))
    blocks = [[names[0]]] + [[n for n in names if n.startswith(f"model.layers.{i}.")] for i in range(spec.num_layers)]
    return blocks + [[n for n in names if n in ("model.norm.weight", "lm_head.weight")]]


def check_hf_shapes(where: str, spec: ModelSpec, got: dict[str, tuple[int, ...]]) -> None:
    """Every tensor the config needs is present with the right shape (``lm_head`` ignored when tied)."""
    for name, want in hf_shapes(spec).items():
        if name not in got:
            raise ConvertError(f"{where}: missing tensor {name} that the model config needs ({spec_hint(spec)})")
        check_shape(where, name, got[name], want, spec_hint(spec))


@register_reader
class HFReader(Reader):
    format = "hf"

    def __init__(self, path: str | Path, **options) -> None:
        super().__init__(path)
        try:
            self.spec = spec_from_hf_dir(self.path)
        except KeyError as e:  # unknown model_type
            raise ConvertError(f"{self.path / 'config.json'}: {e}") from e
        self.weight_map = self._weight_map()
        shapes = {}
        for name, file in self.weight_map.items():
            with safe_open(self.path / file, framework="pt") as f:
                shapes[name] = tuple(f.get_slice(name).get_shape())
        check_hf_shapes(str(self.path), self.spec, shapes)

    def _weight_map(self) -> dict[str, str]:
        index, single = self.path / INDEX, self.path / SINGLE
        if index.is_file():
            wmap = json.loads(index.read_text())["weight_map"]
        elif single.is_file():
            with safe_open(single, framework="pt") as f:
                wmap = {k: SINGLE for k in f.keys()}
        else:
            raise ConvertError(f"{self.path}: no {INDEX} or {SINGLE} (only safetensors checkpoints are read)")
        for file in sorted(set(wmap.values())):
            if not (self.path / file).is_file():
                raise ConvertError(f"{self.path / file}: missing shard listed in {index}")
        return wmap

    def blocks(self) -> Iterator[Block]:
        for names in block_names(self.spec):
            block = {}
            for file in sorted({self.weight_map[n] for n in names}):
                with safe_open(self.path / file, framework="pt") as f:
                    block.update({n: f.get_tensor(n) for n in names if self.weight_map[n] == file})
            yield block

    def logits(self, input_ids: Tensor) -> Tensor:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=torch.float32, local_files_only=True)
        with torch.no_grad():
            return model.eval()(input_ids).logits.float()

    def source_dtype(self) -> torch.dtype:
        name = "model.embed_tokens.weight"
        with safe_open(self.path / self.weight_map[name], framework="pt") as f:
            stored = f.get_slice(name).get_dtype()
        return {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}.get(stored, torch.float32)

    def tokenizer_dir(self) -> Path | None:
        return find_tokenizer_dir(self.path, levels=0)


@register_writer
class HFWriter(Writer):
    format = "hf"
    copies_stored_bytes = True

    def __init__(self, max_shard_bytes: int = DEFAULT_SHARD_BYTES, tokenizer: str | Path | None = None,
                 **options) -> None:
        super().__init__(**options)
        self.max_shard_bytes, self.tokenizer = max_shard_bytes, tokenizer

    def write(self, spec: ModelSpec, blocks: Iterator[StoredBlock], out_dir: Path, dtype: torch.dtype,
              reader: Reader) -> None:
        expected = hf_shapes(spec)
        out = ShardedSafetensorsWriter(out_dir, expected, dtype, self.max_shard_bytes)
        try:
            for block in blocks:
                for name, t in block.items():
                    if name not in expected:
                        raise ConvertError(f"{reader.path}: unexpected tensor {name} for a {spec.family} model")
                    if isinstance(t, Tensor):
                        check_shape(str(reader.path), name, tuple(t.shape), expected[name], spec_hint(spec))
                        out.put(name, t)
                    else:  # file pieces holding its bytes (Reader.stored_blocks)
                        out.copy(name, t)
            missing = sorted(out.pending)
            if missing:
                raise ConvertError(f"{reader.path}: the checkpoint yielded no {missing[:3]} ...")
            out.close()
        finally:
            out.abort()
        self._write_configs(spec, out_dir, dtype, reader)

    def _write_configs(self, spec: ModelSpec, out_dir: Path, dtype: torch.dtype, reader: Reader) -> None:
        cfg = hf_config_from_spec(spec)
        cfg.architectures = [ARCHITECTURES[spec.family]]
        cfg.dtype = dtype
        cfg.save_pretrained(out_dir)
        tok_dir = Path(self.tokenizer) if self.tokenizer else reader.tokenizer_dir()
        gen = next((d / GENERATION_CONFIG for d in (reader.path, tok_dir) if d and (d / GENERATION_CONFIG).is_file()),
                   None)
        if gen is not None:
            shutil.copy2(gen, out_dir / GENERATION_CONFIG)
        else:
            (out_dir / GENERATION_CONFIG).write_text(json.dumps(generation_config(cfg), indent=2) + "\n")
        copy_tokenizer(tok_dir, out_dir)


def generation_config(cfg) -> dict:
    """What ``GenerationConfig.from_model_config`` keeps of a llama/qwen2 config: the special token ids."""
    import transformers

    ids = {k: getattr(cfg, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return {**{k: v for k, v in ids.items() if v is not None}, "transformers_version": transformers.__version__}


def copy_tokenizer(tok_dir: Path | None, out_dir: Path) -> None:
    if tok_dir is None:
        log.warning("no tokenizer files found (pass --tokenizer DIR); %s has none", out_dir)
        return
    copied = [f for f in TOKENIZER_FILES if (tok_dir / f).is_file()]
    if not copied:
        raise ConvertError(f"{tok_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES[:2])} ...)")
    for f in copied:
        shutil.copy2(tok_dir / f, out_dir / f)
    log.info("copied tokenizer files from %s: %s", tok_dir, ", ".join(copied))
