"""Benchmark ``lcr convert --from megatron --to hf`` on a Llama-3.2-1B-shaped random checkpoint (CPU).

    .venv/bin/python bench/bench_convert.py                      # bf16 source -> bf16 HF, 2 GiB shards
    .venv/bin/python bench/bench_convert.py --layers 4 --shard-size 500MiB --workdir /tmp/lcr-bench

Writes a random bf16 Megatron checkpoint (16 layers, hidden 2048, 32 heads / 8 KV heads, ffn 8192, vocab 128256,
tied embeddings: 1.24 B parameters, 2.5 GB), then measures, with the page cache warm for both:
  * time: the conversion (``convert()`` in a fresh process, its imports done before) against a raw copy
    of the same bytes on the same disk (``shutil.copyfile`` of every source file into a new directory, then fsync;
    the converter fsyncs its shards too), fastest of ``--repeats`` each, alternating which runs first; target
    <= 2x;
  * memory: the peak RSS (``VmHWM``) of the converting process against the largest output shard, target <= 1.5x;
    the peak RSS of a process that only does the same imports is printed beside it (the part that is not data).
The numbers are recorded by hand in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from lcrecipes.checkpoint.convert.base import Reader
from lcrecipes.checkpoint.convert.hf import block_names, hf_shapes
from lcrecipes.checkpoint.convert.megatron import MegatronWriter
from lcrecipes.commands.convert import parse_size
from lcrecipes.models import ModelSpec

REPO = Path(__file__).resolve().parents[1]


def llama_1b(layers: int) -> ModelSpec:
    return ModelSpec(family="llama", vocab_size=128256, hidden_size=2048, num_layers=layers, num_heads=32,
                     num_kv_heads=8, head_dim=64, ffn_hidden_size=8192, max_position_embeddings=131072,
                     rope_theta=500000.0, norm_eps=1e-5, tie_embeddings=True, rope_scaling={
                         "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192})


class RandomReader(Reader):
    """Random bf16 blocks of a spec (the benchmark's source model)."""

    format = "random"

    def __init__(self, path: Path, spec: ModelSpec) -> None:
        self.path, self.spec = path, spec

    def blocks(self) -> Iterator[dict[str, torch.Tensor]]:
        gen, shapes = torch.Generator().manual_seed(0), hf_shapes(self.spec)
        for names in block_names(self.spec):
            yield {n: (torch.randn(shapes[n], generator=gen) * 0.02).to(torch.bfloat16) for n in names}


def raw_copy(src: Path, dst: Path) -> float:
    """Seconds to copy every file of ``src`` under ``dst`` with ``shutil.copyfile`` (on Linux a kernel-side copy,
    ``sendfile``: the fastest copy Python offers, what ``cp`` does) and fsync the copies at the end (the
    converter's pattern: all shards written, then fsynced)."""
    start = time.perf_counter()
    dst.mkdir()
    for f in sorted(src.iterdir()):
        shutil.copyfile(f, dst / f.name)
    for f in sorted(dst.iterdir()):
        fd = os.open(f, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - start


CHILD = """
import json, sys, time
from lcrecipes.checkpoint.convert import convert
from lcrecipes.models import get_family, hf_config_from_spec
hf_config_from_spec(get_family("llama").tiny_spec())  # the lazy transformers imports, outside the timing
args = json.loads(sys.argv[1])
seconds = None
if args:
    start = time.perf_counter()
    convert("megatron", "hf", args["src"], args["dst"], dtype=args["dtype"], max_shard_bytes=args["shard"])
    seconds = time.perf_counter() - start
hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "peak_rss": hwm_kb * 1024}))
"""


def child(args: dict) -> dict:
    """Run ``CHILD`` (a conversion, or only the imports when ``args`` is empty) in a fresh process; its own
    ``VmHWM`` is the peak RSS of that process alone (``ru_maxrss`` would count the parent's pages at fork)."""
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--shard-size", default="2GiB")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--workdir", help="where to write (default: a temporary directory, removed at the end)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lcr-bench-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    src, dst, copy = work / "megatron", work / "hf", work / "copy"
    spec = llama_1b(args.layers)
    try:
        if not (src / "model_spec.json").is_file():
            shutil.rmtree(src, ignore_errors=True)
            src.mkdir()
            t = time.perf_counter()
            reader = RandomReader(src, spec)
            MegatronWriter().write(spec, reader.blocks(), src, torch.bfloat16, reader)
            print(f"wrote the random source checkpoint in {time.perf_counter() - t:.1f} s")
        src_bytes = sum(f.stat().st_size for f in src.iterdir())
        base_rss = child({})["peak_rss"]
        copy_s, convert_s, rss = float("inf"), float("inf"), 0
        job = {"src": str(src), "dst": str(dst), "dtype": args.dtype, "shard": parse_size(args.shard_size)}
        for i in range(args.repeats):  # fastest of each, alternating which goes first after a clean os.sync()
            for first in ("copy", "convert") if i % 2 == 0 else ("convert", "copy"):
                shutil.rmtree(copy if first == "copy" else dst, ignore_errors=True)
                os.sync()
                if first == "copy":
                    copy_s = min(copy_s, raw_copy(src, copy))
                else:
                    got = child(job)
                    convert_s, rss = min(convert_s, got["seconds"]), max(rss, got["peak_rss"])
        shard = max(f.stat().st_size for f in dst.glob("*.safetensors"))
        result = {
            "params_b": round(spec.num_params() / 1e9, 3), "source_gb": round(src_bytes / 1e9, 3),
            "shards": len(list(dst.glob("*.safetensors"))), "largest_shard_gb": round(shard / 1e9, 3),
            "convert_s": round(convert_s, 2), "raw_copy_s": round(copy_s, 2),
            "time_ratio": round(convert_s / copy_s, 2), "peak_rss_gb": round(rss / 1e9, 3),
            "import_only_rss_gb": round(base_rss / 1e9, 3), "rss_ratio": round(rss / shard, 2),
        }
        print(json.dumps(result))
        print(f"time: convert {convert_s:.1f} s vs raw copy {copy_s:.1f} s = {result['time_ratio']}x (target <= 2x)")
        print(f"memory: peak RSS {rss / 1e9:.2f} GB (imports alone {base_rss / 1e9:.2f} GB) vs largest shard "
              f"{shard / 1e9:.2f} GB = {result['rss_ratio']}x (target <= 1.5x)")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        else:
            for d in (dst, copy):
                shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
