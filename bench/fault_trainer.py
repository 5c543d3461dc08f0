"""``lcr`` with fault hooks: the entry point the fault-injection runs start under torchrun.

    torchrun --standalone --nproc_per_node 2 bench/fault_trainer.py train RECIPE [section.key=value ...]

Without ``FAULT_*`` variables this is exactly ``lcr``. The variables below are read here only (never by the
``lcrecipes`` package); each value is JSON:

- ``FAULT_SAVE_TRACE=PATH``: append one JSON line per *hook point* inside ``CheckpointManager.save``:
  ``{"rank", "step", "index", "point"}`` (``index`` counts this rank's points within the save, from 1).
- ``FAULT_SAVE_KILL={"step": S, "rank": R, "index": K, "victim": "all" | "self"}``: at point K (or at the first
  point whose name starts with ``"point": NAME``) of rank R's save of step S, SIGKILL the whole job (``all``:
  the torchrun agent and every rank, like a lost node) or only this rank (``self``: torchrun then stops the
  others). ``FAULT_FIRED=PATH`` receives ``{"point", "pid", ...}`` just before.
- ``FAULT_RANK_DEATH={"step": S, "rank": R, "how": "exit" | "hang"}``: rank R, in optimizer step S after its
  forward/backward, calls ``os._exit(1)`` (``exit``) or stops itself with SIGSTOP (``hang``).
- ``FAULT_MEGATRON_CPU=1``: install the test fixture that runs Megatron-Core on CPU (``tests/megatron_cpu.py``).

Hook points of a save (each rank): before/after every barrier, gather, broadcast, file listing and hashing, the
backend's native write, every ``torch.save`` (plus one point after half of its bytes are on disk: a torn file),
``state.json``, fsyncs, renames (including a pruned ``step_N``'s to ``.trash-step_N-<pid>``), the ``latest``
pointer, pruning, and one point per file removed while pruning (named ``rmtree .trash-step_N-<pid>: removed F``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _spec(name: str) -> dict | None:
    value = os.environ.get(name)
    return json.loads(value) if value else None


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


# The torchrun agent that started this worker, fixed at start-up. Looking the parent up at kill time is unsafe: once
# the agent is gone (another rank already killed the job) the worker is re-parented to init or a subreaper (a CI
# runner), and killing "the parent's children" would kill everything on the machine.
_AGENT_PID = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else None


def kill_job(victim: str) -> None:
    """SIGKILL this rank with everything it started, and with ``victim == "all"`` first the torchrun agent and its
    other workers. Also right when called from a process the rank forked (Megatron-Core's checkpoint writers):
    killing only that writer would leave its rank waiting for it and the job hanging until the peers' collective
    timeout. Nothing outside the job is touched: the agent recorded at start-up must still be an ancestor (an
    orphaned worker, re-parented to init or a CI runner's subreaper, kills only itself)."""
    import psutil

    me = psutil.Process()
    chain = [me, *me.parents()]  # this process, then its ancestors, nearest first
    agent = next((p for p in chain[1:] if p.pid == _AGENT_PID), None) if _AGENT_PID is not None else None
    if agent is not None:
        rank = next(p for p in chain if p.ppid() == agent.pid)  # the worker torchrun started
        top = agent if victim == "all" else rank
        try:
            doomed = [p for p in top.children(recursive=True) if p.pid != me.pid]
        except psutil.NoSuchProcess:  # gone meanwhile: only this process is left to kill
            doomed, top = [], None
        for p in [*doomed, *([top] if top is not None and top.pid != me.pid else [])]:
            try:
                p.send_signal(signal.SIGKILL)  # psutil checks the create time: a reused pid is not signalled
            except psutil.NoSuchProcess:
                pass
    os.kill(os.getpid(), signal.SIGKILL)


class SaveHooks:
    """Counts the hook points of each ``CheckpointManager.save`` on this rank; traces them or kills at one."""

    def __init__(self, trace: str | None, kill: dict | None, fired: str | None):
        self.trace, self.kill, self.fired = trace, kill, fired
        self.step: int | None = None
        self.index = 0

    def begin(self, step: int) -> None:
        self.step, self.index = step, 0

    def end(self) -> None:
        self.step = None

    def point(self, name: str) -> None:
        if self.step is None:
            return
        self.index += 1
        if self.trace:
            with open(self.trace, "a") as f:
                f.write(json.dumps({"rank": _rank(), "step": self.step, "index": self.index, "point": name}) + "\n")
        k = self.kill
        at = k and (k["step"], k["rank"]) == (self.step, _rank())
        if at and (k.get("index") == self.index or "point" in k and name.startswith(k["point"])):
            if self.fired:
                Path(self.fired).write_text(json.dumps({"point": name, "pid": os.getpid(), **k}))
            kill_job(k.get("victim", "all"))

    def around(self, name: str, fn):
        """``fn`` with a point before and after each call."""

        def wrapped(*args, **kwargs):
            self.point(f"before {name}")
            out = fn(*args, **kwargs)
            self.point(f"after {name}")
            return out

        return wrapped

    def rmtree(self, path, ignore_errors: bool = False, **kwargs) -> None:
        """``shutil.rmtree`` one file at a time, a point after each removal (a kill leaves a half-deleted dir)."""
        self.point(f"before rmtree {Path(path).name}")
        for root, dirs, files in os.walk(path, topdown=False):
            for f in files:
                os.unlink(os.path.join(root, f))
                self.point(f"rmtree {Path(path).name}: removed {f}")
            for d in dirs:
                os.rmdir(os.path.join(root, d))
        shutil.rmtree(path, ignore_errors=ignore_errors, **kwargs)
        self.point(f"after rmtree {Path(path).name}")

    def torch_save(self, original):
        """``torch.save`` to a path in two halves, with points before, between (a torn file) and after."""

        def save(obj, f, *args, **kwargs):
            if not isinstance(f, str | os.PathLike):
                return self.around("torch.save", original)(obj, f, *args, **kwargs)
            name = Path(f).name
            with tempfile.TemporaryDirectory() as tmp:  # same file name: torch.save names its zip archive by it
                original(obj, os.path.join(tmp, name), *args, **kwargs)
                data = Path(tmp, name).read_bytes()
            self.point(f"before torch.save {name}")
            with open(f, "wb") as out:
                out.write(data[: len(data) // 2])
                out.flush()
                self.point(f"torch.save {name}: half written")
                out.write(data[len(data) // 2 :])
            self.point(f"after torch.save {name}")

        return save


def install_save_hooks(hooks: SaveHooks) -> None:
    """Patch the checkpoint manager's module-level helpers and ``save``/``_publish``/``prune`` with hook points."""
    import torch

    from lcrecipes.checkpoint import manager as m

    for name in (
        "_barrier",
        "_all_gather",
        "_broadcast",
        "write_state",
        "fsync_dir",
        "atomic_write_text",
        "manifest",
        "list_files",
    ):
        setattr(m, name, hooks.around(name, getattr(m, name)))
    m.os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    m.os.replace = hooks.around("os.replace", os.replace)
    m.shutil = types.SimpleNamespace(rmtree=hooks.rmtree)
    cls = m.CheckpointManager
    cls._publish = hooks.around("_publish", cls._publish)
    cls.prune = hooks.around("prune", cls.prune)
    original_save, original_torch_save = cls.save, torch.save

    def save(self, state, write_native):
        hooks.begin(state.step)
        torch.save = hooks.torch_save(original_torch_save)
        try:
            return original_save(self, state, hooks.around("write_native", write_native))
        finally:
            torch.save = original_torch_save
            hooks.end()

    cls.save = save


def install_rank_death(spec: dict) -> None:
    """Rank ``spec["rank"]`` dies (or hangs) in optimizer step ``spec["step"]``, after its forward/backward."""
    from lcrecipes.train.loop import Trainer

    original = Trainer.train_step

    def doom(backend) -> None:
        step = backend.fault_trainer.state.step + 1
        if step == spec["step"] and _rank() == spec["rank"]:
            print(f"fault_trainer: rank {_rank()} {spec['how']}s in step {step}", file=sys.stderr, flush=True)
            if spec["how"] == "hang":
                os.kill(os.getpid(), signal.SIGSTOP)
            os._exit(1)

    def train_step(self):
        backend = self.backend
        if not getattr(backend, "fault_armed", False):
            backend.fault_armed, backend.fault_trainer = True, self
            inner = backend.optimizer_step

            def optimizer_step(lr):
                doom(backend)
                return inner(lr)

            backend.optimizer_step = optimizer_step
        return original(self)

    Trainer.train_step = train_step


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(REPO))
    if os.environ.get("FAULT_MEGATRON_CPU") == "1":
        from tests.megatron_cpu import redirect_cuda_to_cpu

        redirect_cuda_to_cpu(type_as_cuda=True)  # CPU tensors report CUDA type names, as Megatron's optimizer wants
    kill, trace = _spec("FAULT_SAVE_KILL"), os.environ.get("FAULT_SAVE_TRACE")
    if kill or trace:
        install_save_hooks(SaveHooks(trace, kill, os.environ.get("FAULT_FIRED")))
    death = _spec("FAULT_RANK_DEATH")
    if death:
        install_rank_death(death)
    from lcrecipes.cli import main as lcr

    return lcr(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
