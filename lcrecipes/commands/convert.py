"""``lcr convert --from {megatron,deepspeed,hf} --to {hf,megatron} SRC DST [--verify]``.

    lcr convert --from megatron --to hf runs/x/checkpoints/step_100/model runs/x/hf --dtype bf16 --verify
    lcr convert --from deepspeed --to hf runs/x/checkpoints/step_100 runs/x/hf --verify
    lcr convert --from hf --to megatron /models/Qwen2.5-7B-Instruct-1M runs/x/init

DST must not exist (``--overwrite`` replaces it); it appears only once complete (and verified with ``--verify``).
The conversion code is imported only when the verb runs (``lcr`` builds every verb's parser at start-up).
"""

from __future__ import annotations

import argparse
import re
import sys

# Kept equal to the converter registries by tests/unit/test_convert_cli.py.
SOURCES = ("deepspeed", "hf", "megatron")
DESTINATIONS = ("hf", "megatron")
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
DEFAULT_SHARD = "2GiB"
_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


def parse_size(text: str) -> int:
    """``"2GB"``, ``"500MiB"``, ``"1000000"`` -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2GB, 500MiB, 1000000)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="src_format", required=True, choices=SOURCES)
    p.add_argument("--to", dest="dst_format", required=True, choices=DESTINATIONS)
    p.add_argument("src", help="source checkpoint directory")
    p.add_argument("dst", help="new output directory")
    p.add_argument("--verify", action="store_true", help="compare logits of source and result on CPU and fail "
                   "if over tolerance (relative 1e-5 at the source's precision; 5e-2 bf16, 1e-2 fp16 when narrowed)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="output dtype (auto: the source's)")
    p.add_argument("--tag", help="DeepSpeed tag folder (default: the latest file's, or the only one)")
    p.add_argument("--tokenizer", help="copy tokenizer files from this directory (default: found beside SRC)")
    p.add_argument("--max-shard-size", type=parse_size, default=parse_size(DEFAULT_SHARD),
                   help=f"HF output: bytes per safetensors shard (default {DEFAULT_SHARD})")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")


def main(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from lcrecipes.checkpoint.convert import ConvertError, convert

    hf_logging.disable_progress_bar()
    try:
        res = convert(args.src_format, args.dst_format, args.src, args.dst, dtype=args.dtype, verify=args.verify,
                      overwrite=args.overwrite, tag=args.tag, tokenizer=args.tokenizer,
                      max_shard_bytes=args.max_shard_size)
    except (ConvertError, FileExistsError) as e:
        print(f"lcr convert: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {res.dst} ({args.dst_format}, {res.dtype}) in {res.seconds:.1f} s")
    if res.verify is not None:
        print(res.verify.line())
    return 0
