"""Context-parallel benchmark on CPU: DeepSpeed ZeRO-3 training of the tiny_cpu model (ring attention, one thread
per rank, one document per sequence), CP=1 on 1 rank vs CP=2 on 2 ranks at the same total sequence length.

    .venv/bin/python bench/bench_cp.py                         # ratios at 4096 tokens + longest-sequence search
    .venv/bin/python bench/bench_cp.py --seq-len 2048 --no-search

Prints, per CP size: per-rank peak resident memory (and its part above the rank's RSS once the model was built
and partitioned: activations, gradients, optimizer states, what CP and ZeRO divide), median step time; then the
ratios CP=2 / CP=1 (targets: memory <= 0.55, time <= 0.6) and the longest power-of-two sequence that trains (one
optimizer step) under a per-rank memory cap (RLIMIT_AS: the rank's address space after start-up plus
``--rank-mem-gib``, like a device's memory) and a step-time cap (``--max-step-s``), with the reason the next
length failed. Each measurement is its own ``torchrun --standalone`` run of this file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny_cpu" / "pretrain_1.yaml"
TAG = "BENCH_RESULT "
GiB = float(1 << 30)


def _statm(field: int) -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[field]) * os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    return _statm(1)


def _vsz() -> int:
    return _statm(0)


def _overrides(work: Path, seq_len: int, cp: int) -> list[str]:
    return [f"data.out_dir={work / f'data_{seq_len}'}", f"data.seq_len={seq_len}", f"parallel.cp={cp}",
            f"launch.gpus_per_node={cp}", "parallel.sp=ring", "parallel.zero_stage=3", "train.num_threads=1",
            "train.dtype=fp32", f"model.max_position_embeddings={max(seq_len, 8192)}", "model.hf_path=null",
            f"data.context_tokens={seq_len // 2}", f"run_dir={work / 'run'}", "train.warmup_steps=0"]


def worker(args: argparse.Namespace) -> None:
    """One measurement (under torchrun): ``--steps`` timed optimizer steps after one warm-up step (0: time the
    first step itself)."""
    import torch.distributed as dist

    from lcrecipes.config import load_recipe
    from lcrecipes.train.backends import get_backend
    from lcrecipes.train.data import TrainBatches, open_split
    from lcrecipes.train.loss import global_target_tokens, loss_weight
    from lcrecipes.train.run import start_process

    recipe = load_recipe(RECIPE, _overrides(Path(args.work), args.seq_len, args.cp))
    mesh, device = start_process(recipe)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    backend = get_backend("deepspeed")(recipe, mesh, device, "ring")
    backend.setup()
    base = _rss()  # libraries + this rank's ZeRO-3 share of the weights
    if args.rank_mem_gib > 0:  # the cap counts what training adds to the address space of the started rank
        cap = _vsz() + int(args.rank_mem_gib * GiB)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    batches = TrainBatches(open_split(recipe.cfg, "train"), recipe.cfg, mesh)
    times = []
    for _ in range(1 + args.steps):
        t0 = time.perf_counter()
        mbs = batches.next_step()
        backend.train_step(mbs, loss_weight(global_target_tokens(mbs)), 1e-4)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows = [None] * mesh.world_size
    dist.all_gather_object(rows, {"peak": peak, "base": base, "times": times[1:] or times})
    if mesh.rank == 0:
        print(TAG + json.dumps(rows), flush=True)


def measure(work: Path, seq_len: int, cp: int, steps: int, mem_gib: float, timeout: float) -> dict:
    """Run one measurement; returns {ok, peak_gib, above_gib, step_s} (max over ranks) or {ok: False, why}."""
    from lcrecipes.train.synthetic import write_synthetic_shards

    write_synthetic_shards(work / f"data_{seq_len}", seq_len=seq_len, n_train=8, n_eval=1, vocab_size=2048,
                           doc_len=(seq_len, seq_len))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(cp), __file__,
           "--worker", "--work", str(work), "--seq-len", str(seq_len), "--cp", str(cp), "--steps", str(steps),
           "--rank-mem-gib", str(mem_gib)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"ok": False, "why": f"over {timeout:.0f} s"}
    lines = [line for line in out.stdout.splitlines() if line.startswith(TAG)]
    if out.returncode or not lines:
        oom = "can't allocate memory" in out.stderr or "MemoryError" in out.stderr
        why = f"over the {mem_gib} GiB per-rank cap" if oom else f"exit {out.returncode}: {out.stderr[-400:]}"
        return {"ok": False, "why": why}
    rows = json.loads(lines[-1][len(TAG):])
    return {"ok": True, "peak_gib": max(r["peak"] for r in rows) / GiB,
            "above_gib": max(r["peak"] - r["base"] for r in rows) / GiB,
            "step_s": max(statistics.median(r["times"]) for r in rows)}


def compare(work: Path, args: argparse.Namespace) -> None:
    res = {cp: measure(work, args.seq_len, cp, args.steps, 0, args.timeout) for cp in (1, 2)}
    print(f"\nseq_len {args.seq_len} tokens, tiny_cpu model, ZeRO-3, ring attention, 1 thread per rank")
    print(f"{'cp':>3}  {'ranks':>5}  {'peak RSS GiB':>12}  {'above base GiB':>14}  {'step s':>8}")
    for cp, r in res.items():
        if not r["ok"]:
            print(f"{cp:>3}  {cp:>5}  failed: {r['why']}")
            return
        print(f"{cp:>3}  {cp:>5}  {r['peak_gib']:>12.3f}  {r['above_gib']:>14.3f}  {r['step_s']:>8.2f}")
    one, two = res[1], res[2]
    print(f"ratio CP=2/CP=1: memory above base {two['above_gib'] / one['above_gib']:.3f} (target <= 0.55), "
          f"peak RSS {two['peak_gib'] / one['peak_gib']:.3f}, step time {two['step_s'] / one['step_s']:.3f} "
          f"(target <= 0.6)")


def _estimate(r: dict, seq: int, cap_gib: float) -> str:
    """Memory-bound length if time were no limit: the cap over the measured memory per token (an estimate)."""
    per_token = r["above_gib"] / seq
    return f"memory alone would allow ~{int(cap_gib / per_token) if per_token > 0 else 0} tokens (estimate)"


def search(work: Path, args: argparse.Namespace) -> None:
    """Double the length while one step fits both caps; a length whose predicted step time (x4: attention is
    quadratic) is over the time cap is reported, not run."""
    print(f"\nlongest sequence: powers of two from {args.search_from}, one optimizer step, <= {args.rank_mem_gib} "
          f"GiB per rank above start-up (RLIMIT_AS), <= {args.max_step_s:.0f} s per step")
    for cp in (1, 2):
        seq, best, why = args.search_from, None, ""
        while True:
            r = measure(work, seq, cp, 0, args.rank_mem_gib, args.max_step_s * 2 + 300)
            if r["ok"] and r["step_s"] > args.max_step_s:
                r = {"ok": False, "why": f"step {r['step_s']:.0f} s > {args.max_step_s:.0f} s"}
            if not r["ok"]:
                why = r["why"]
                break
            best = (seq, r)
            seq *= 2
            if 4 * r["step_s"] > args.max_step_s:
                why = f"predicted ~{4 * r['step_s']:.0f} s/step > {args.max_step_s:.0f} s (not run)"
                break
        if best is None:
            print(f"cp={cp}: nothing trains at {args.search_from} ({why})")
            continue
        s, r = best
        print(f"cp={cp}: {s} tokens ({r['above_gib']:.2f} GiB/rank above start-up, peak RSS {r['peak_gib']:.2f} "
              f"GiB/rank, {r['step_s']:.1f} s/step); {seq} tokens: {why}; {_estimate(r, s, args.rank_mem_gib)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up step)")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--no-search", action="store_true", help="skip the longest-sequence search")
    p.add_argument("--search-from", type=int, default=8192)
    p.add_argument("--rank-mem-gib", type=float, default=4.0, help="per-rank address-space cap in the search")
    p.add_argument("--max-step-s", type=float, default=300.0, help="step-time cap in the search")
    p.add_argument("--work", default=None, help="scratch dir (default: a temporary one)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cp", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory(prefix="bench_cp_") as tmp:
        work = Path(args.work or tmp)
        compare(work, args)
        if not args.no_search:
            search(work, args)


if __name__ == "__main__":
    main()
