"""Pieces of the fault-injection bench (``bench/fault_inject.py``): start and kill a torchrun job, check the
checkpoint directory after a kill, and compare a finished run with the uninterrupted one.

A job is ``torchrun --standalone bench/fault_trainer.py train RECIPE ...`` in its own session. torchrun starts each
worker in a session of its own, so killing torchrun's process group would leave the workers training (orphans);
:meth:`Job.kill` therefore SIGKILLs the whole process tree (every descendant seen since the start).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
WRAPPER = REPO / "bench" / "fault_trainer.py"
RECIPE = REPO / "recipes" / "tiny_cpu" / "pretrain_1.yaml"
# The tiny recipe of the issue: 2 layers, hidden 64, 512-token sequences, CP=2 on 2 gloo ranks, a save per step.
MODEL = ["model.hidden_size=64", "model.num_layers=2", "model.head_dim=16", "model.ffn_hidden_size=172"]
# the plain documents the results in bench/RESULTS.md were made on (pretrain_1 adds questions and repeats)
DATA = ["data.seq_len=512", "data.num_train=32", "data.synthetic.lm_doc_passages=4",
        "data.synthetic.lm_doc_questions=0", "data.synthetic.repeat_attributes=false"]
TRAIN = ["checkpoint.every=1", "train.log_every=1", "train.tensorboard=false", "parallel.timeout_s=120"]
# Metric fields that must match exactly; timings (step_s, tokens_per_s, mfu, peak_mem_gib, tflops) may not.
ROW_KEYS = {
    "train": ("step", "loss", "grad_norm", "lr", "target_tokens", "tokens_seen"),
    "eval": ("step", "loss", "target_tokens"),
}
STATE_KEYS = ("step", "tokens", "sampler", "rng", "extra", "backend", "world_size")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULT_")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    return {**env, **(extra or {})}


def prepare_data(data_dir: Path, log: Path) -> None:
    """``lcr prepare`` the tiny recipe's shards once (a rerun skips finished splits)."""
    cmd = [
        sys.executable,
        "-m",
        "lcrecipes.cli",
        "prepare",
        str(RECIPE),
        *DATA,
        f"data.out_dir={data_dir}",
        "name=fault/prepare",
        f"run_dir={data_dir.parent / 'prepare'}",
    ]
    with open(log, "w") as f:
        subprocess.run(cmd, cwd=REPO, env=child_env(), stdout=f, stderr=subprocess.STDOUT, check=True, timeout=900)


@dataclass
class Job:
    """One torchrun launch of the wrapper; ``seen`` collects every descendant pid for a clean kill."""

    run_dir: Path
    data_dir: Path
    log: Path
    steps: int
    backend: str = "deepspeed"
    env: dict[str, str] = field(default_factory=dict)
    nproc: int = 2

    def __post_init__(self) -> None:
        overrides = [
            *MODEL,
            *DATA,
            *TRAIN,
            f"train.steps={self.steps}",
            f"parallel.backend={self.backend}",
            f"data.out_dir={self.data_dir}",
            f"name=fault/{self.run_dir.name}",
            f"run_dir={self.run_dir}",
        ]
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(self.nproc),
            str(WRAPPER),
            "train",
            str(RECIPE),
            *overrides,
        ]
        self._out = open(self.log, "a")
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=child_env(self.env), stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.seen: dict[int, psutil.Process] = {}

    def alive(self) -> bool:
        """Poll; remember the current descendants."""
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL torchrun and every worker at once (a lost node)."""
        self.alive()
        self.proc.kill()
        self._kill_seen()
        self.finish(30)

    def _kill_seen(self) -> None:
        """SIGKILL every descendant seen; psutil checks each one's create time, so a reused pid is never hit."""
        for p in self.seen.values():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass

    def finish(self, timeout: float) -> int | None:
        """Wait for torchrun to exit (kill the tree after ``timeout`` s), reap leftovers; its exit code."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            self.kill()
        self._kill_seen()  # a worker that outlived torchrun (it runs in its own session)
        self._out.close()
        return code


def latest_step(run_dir: Path) -> int:
    """Step of the checkpoint ``latest`` names (-1 when none yet)."""
    try:
        return int((run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    except (FileNotFoundError, IndexError, ValueError):
        return -1


def check_after_kill(run_dir: Path) -> dict:
    """``latest`` names a complete checkpoint (sha256 of every file) or is absent; lists partial directories."""
    from lcrecipes.checkpoint import CheckpointError, CheckpointManager, verify_checkpoint

    root = run_dir / "checkpoints"
    out = {"latest": None, "tmp_dirs": [], "broken_step_dirs": [], "violations": []}
    if not root.is_dir():
        return out
    out["tmp_dirs"] = sorted(p.name for p in root.iterdir() if p.name.startswith((".step_", ".trash-", ".latest.")))
    manager = CheckpointManager(root)
    try:
        latest = manager.latest()
    except CheckpointError as e:
        out["violations"].append(f"latest: {e}")
        return out
    for step in manager.steps():
        path = manager.step_dir(step)
        try:
            state = verify_checkpoint(path, "full")
            if state["step"] != step:
                raise CheckpointError(f"{path}: state.json says step {state['step']}")
        except CheckpointError as e:
            if latest is not None and path == latest:
                out["violations"].append(f"latest ({path.name}) is not complete: {e}")
            else:
                out["broken_step_dirs"].append(path.name)
    out["latest"] = latest.name if latest else None
    return out


def snapshot(run_dir: Path) -> dict:
    """What must equal the uninterrupted run: metric rows, the final checkpoint's state and file hashes."""
    from lcrecipes.checkpoint import CheckpointManager, read_state

    rows = []
    for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows.append({k: r.get(k) for k in ("kind", *ROW_KEYS[r["kind"]])})
    manager = CheckpointManager(run_dir / "checkpoints")
    latest = manager.latest()
    state = read_state(latest) if latest else {}
    return {
        "rows": rows,
        "latest": latest.name if latest else None,
        "steps": manager.steps(),
        "state": {k: state.get(k) for k in STATE_KEYS},
        "files": {n: f["sha256"] for n, f in state.get("files", {}).items()},
        "ckpt_dir": str(latest) if latest else None,
    }


def compare(ref: dict, got: dict) -> list[str]:
    """Differences between two snapshots, one line each (empty: bit-identical)."""
    out = _row_diffs(ref["rows"], got["rows"])
    for key in ("latest", "steps"):
        if ref[key] != got[key]:
            out.append(f"checkpoints {key}: {got[key]} != {ref[key]}")
    for k, v in ref["state"].items():
        if k == "rng" and v and got["state"].get(k):
            out += _rng_diffs(v, got["state"][k])
        elif got["state"].get(k) != v:
            out.append(f"state.json {k} differs")
    for name in sorted(set(ref["files"]) | set(got["files"])):
        if ref["files"].get(name) != got["files"].get(name) and not _same_dcp_metadata(ref, got, name):
            out.append(f"{name}: sha256 differs; {tensor_diff(ref, got, name)}")
    return out


def _row_diffs(ref: list[dict], got: list[dict]) -> list[str]:
    """Missing, duplicated and differing metric rows, by (kind, step)."""
    key = lambda r: (r["kind"], r["step"])  # noqa: E731
    want, have = {key(r): r for r in ref}, {}
    out = []
    for r in got:
        if key(r) in have:
            out.append(f"metrics: duplicated row {key(r)}")
        have.setdefault(key(r), r)
    out += [f"metrics: missing row {k}" for k in want if k not in have]
    out += [f"metrics: extra row {k}" for k in have if k not in want]
    out += [f"metrics row {k}: {have[k]} != {r}" for k, r in want.items() if k in have and have[k] != r]
    return out


def _rng_diffs(ref: list[dict], got: list[dict]) -> list[str]:
    """One line per rank and generator whose saved state differs (python, numpy, torch, cuda)."""
    if len(ref) != len(got):
        return [f"state.json rng: {len(got)} ranks, uninterrupted run has {len(ref)}"]
    return [
        f"state.json rng[{r}].{g} differs"
        for r, (a, b) in enumerate(zip(ref, got))
        for g in sorted(set(a) | set(b))
        if a.get(g) != b.get(g)
    ]


def _same_dcp_metadata(ref: dict, got: dict, name: str) -> bool:
    """A torch.distributed.checkpoint ``.metadata`` file (Megatron's torch_dist format) that differs only in its
    ``storage_meta`` (the directory it was written to and random save/load ids): the same checkpoint layout."""
    if Path(name).name != ".metadata" or None in (ref["ckpt_dir"], got["ckpt_dir"]):
        return False
    from torch.distributed.checkpoint import FileSystemReader

    try:
        a, b = (FileSystemReader(str(Path(d) / name).rsplit("/", 1)[0]).read_metadata()
                for d in (ref["ckpt_dir"], got["ckpt_dir"]))  # fmt: skip
    except Exception:  # missing on one side, unreadable
        return False
    keep = lambda m: {k: v for k, v in vars(m).items() if k != "storage_meta"}  # noqa: E731
    return keep(a) == keep(b)


def tensor_diff(ref: dict, got: dict, name: str) -> str:
    """Largest absolute difference between the tensors of one checkpoint file (weights-only load)."""
    if not name.endswith(".pt") or ref["ckpt_dir"] is None or got["ckpt_dir"] is None:
        return "not a torch file"
    try:
        a, b = (_load(Path(d) / name) for d in (ref["ckpt_dir"], got["ckpt_dir"]))
    except Exception as e:  # a file only one side has, or a format torch.load does not read
        return f"tensors not compared ({type(e).__name__})"
    diffs = [
        float((x.detach().double() - y.detach().double()).abs().max()) if x.shape == y.shape else float("inf")
        for x, y in zip(_tensors(a), _tensors(b))
        if x.numel()
    ]
    return f"max |diff| {max(diffs, default=0.0):.3g} over {len(diffs)} tensors" if diffs else "no tensors"


def _load(path: Path):
    from lcrecipes.checkpoint.safe_load import load_weights_only

    return load_weights_only(path, map_location="cpu")


def _tensors(obj) -> list:
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in _tensors(obj[k])]
    if isinstance(obj, list | tuple):
        return [t for x in obj for t in _tensors(x)]
    return []


def wait_until(predicate, job: Job, timeout: float, poll_s: float = 0.05) -> bool:
    """Poll ``predicate()`` while the job runs; True when it held, False when the job ended or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if not job.alive():
            return False
        time.sleep(poll_s)
    return False
