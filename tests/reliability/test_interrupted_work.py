"""Data prep and eval SIGKILLed at random moments (seeded), rerun until done: nothing lost, nothing duplicated.

Each attempt is a forked child (no re-import, so kills land inside the real work), killed at a random point: once
a random amount of work is finished (shards written, rows appended; possibly none, i.e. during start-up), after a
random fraction of the time one unit takes. The next attempt resumes in the same directory. After the last attempt
runs to the end, the output must equal the uninterrupted run's:

- ``prepare`` (400 synthetic plain documents, 8 per shard): every shard file and both manifests are
  byte-identical; every document id appears exactly once; no temporary directory is left.
- ``run_eval`` (tiny random Llama, full context + one compression method at two budgets): the same row keys, each
  once, with the same predictions.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from lcrecipes.data.config import DataConfig
from lcrecipes.data.prepare import prepare
from lcrecipes.eval.runner import read_rows, run_eval
from tests.unit.test_eval_context import tiny_tokenizer
from tests.unit.test_eval_runner import _example

KILLS = 6


def _attempt(target, args: tuple, progress=None, at: int = 0, delay: float = 0.0) -> bool:
    """Run ``target(*args)`` in a forked child. With ``progress``, SIGKILL it ``delay`` s after ``progress()``
    reaches ``at`` (units of finished work). True when the kill hit a live child."""
    child = mp.get_context("fork").Process(target=target, args=args)
    child.start()
    if progress is None:
        child.join()
        assert child.exitcode == 0, f"uninterrupted attempt exited {child.exitcode}"
        return False
    while child.is_alive() and progress() < at:
        time.sleep(0.002)
    child.join(delay)
    alive = child.is_alive()
    if alive:
        os.kill(child.pid, signal.SIGKILL)
    child.join()
    return alive


def _kill_and_resume(target, args: tuple, progress, total: int, unit_s: float, seed: int) -> int:
    """KILLS attempts, each killed at a random point: after a random amount of finished work (from what is done
    when it starts, i.e. possibly during start-up) plus a random fraction of one unit; then one to the end.
    Returns how many kills hit a live child."""
    rng = random.Random(seed)
    hits = 0
    for _ in range(KILLS):
        at = rng.randint(progress(), max(progress(), total - 1))
        hits += _attempt(target, args, progress, at, rng.uniform(0, unit_s))
    _attempt(target, args)
    return hits


def _timed(target, args: tuple) -> float:
    t0 = time.monotonic()
    _attempt(target, args)
    return time.monotonic() - t0


# ----- data prep ------------------------------------------------------------------------------------------------
def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for split in ("train", "eval") for p in (root / split).rglob("*")
            if p.is_file()}  # fmt: skip


def _prepare(cfg: DataConfig, out: str) -> None:
    torch.set_num_threads(1)
    prepare(cfg, None, out)


def test_prepare_killed_at_random_points_resumes_to_identical_shards(tmp_path: Path) -> None:
    tiny_tokenizer(chat=False).save_pretrained(tmp_path / "tok")
    cfg = DataConfig(kind="lm", tokenizer=str(tmp_path / "tok"), seq_len=512, num_train=400, num_eval=40,
                     examples_per_shard=8, overlong="split", cache_dir=str(tmp_path / "cache"))  # fmt: skip
    cfg = replace(cfg, synthetic=replace(cfg.synthetic, lm_doc_passages=3))
    duration = _timed(_prepare, (cfg, str(tmp_path / "ref")))
    total = len(list((tmp_path / "ref").glob("*/shard_*")))
    killed = tmp_path / "killed"
    hits = _kill_and_resume(_prepare, (cfg, str(killed)), lambda: len(list(killed.glob("*/shard_*"))), total,
                            duration / total, seed=0)  # fmt: skip
    assert hits >= KILLS - 1, f"only {hits} kills landed inside a {duration:.1f} s prepare"
    ref, got = _files(tmp_path / "ref"), _files(tmp_path / "killed")
    assert sorted(got) == sorted(ref) and all(got[k] == ref[k] for k in ref)
    for split in ("train", "eval"):
        ids = [json.loads(line)["id"] for p in sorted((tmp_path / "killed" / split).glob("shard_*/documents.jsonl"))
               for line in p.read_text().splitlines()]  # fmt: skip
        n = cfg.num_train if split == "train" else cfg.num_eval
        assert len(set(ids)) == n, f"{split}: {len(ids)} document pieces, {len(set(ids))} distinct of {n}"
        assert not list((tmp_path / "killed" / split).glob(".*")), "a temporary directory was left"


# ----- eval -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("eval_kill")
    tok = tiny_tokenizer()
    tok.save_pretrained(root / "model")
    torch.manual_seed(0)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, **ids)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(root / "model")
    rng = random.Random(0)
    (root / "qa.jsonl").write_text("".join(json.dumps(_example(f"q{i}", 4, rng)) + "\n" for i in range(4)))
    snapkv = {"method": "snapkv", "budgets": [16, 32], "modes": ["query_aware"]}
    suite = {"name": "kill_test", "seed": 0, "limit": 4, "max_new_tokens": 4, "max_context_tokens": 1024,
             "tasks": [{"name": "synthetic_ood_qa", "path": str(root / "qa.jsonl")}],
             "settings": {"compression": [snapkv]}}  # fmt: skip
    (root / "suite.yaml").write_text(yaml.safe_dump(suite))
    return {"root": root, "model": str(root / "model"), "suite": str(root / "suite.yaml")}


def _eval(model: str, suite: str, out: str) -> None:
    torch.set_num_threads(1)
    run_eval(model, suite, "doc_ids", out)


def test_eval_killed_at_random_points_resumes_without_lost_or_duplicated_rows(eval_setup) -> None:
    root = eval_setup["root"]
    args = (eval_setup["model"], eval_setup["suite"])
    duration = _timed(_eval, (*args, str(root / "ref")))
    pred = root / "killed" / "predictions.jsonl"
    rows = lambda: pred.read_bytes().count(b"\n") if pred.exists() else 0  # noqa: E731
    hits = _kill_and_resume(_eval, (*args, str(root / "killed")), rows, 12, duration / 12, seed=1)
    assert hits >= KILLS - 1, f"only {hits} kills landed inside a {duration:.1f} s eval"
    ref, got = read_rows(root / "ref"), read_rows(root / "killed")
    keys = [r["key"] for r in got]
    assert len(keys) == len(set(keys)) == len(ref) == 4 * 3, keys
    assert {r["key"]: r["prediction"] for r in got} == {r["key"]: r["prediction"] for r in ref}
    raw = (root / "killed" / "predictions.jsonl").read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == len(ref)
