"""Graceful stop: SIGUSR1 (Slurm's warning before the time limit) or SIGTERM (preemption, ``scontrol requeue``)
asks the loop to save a checkpoint at the next step boundary and exit with ``PREEMPTED_EXIT_CODE``.

The flag is agreed on collectively (max over all ranks) so every rank stops at the same step even when the
signal reached only some of them.
"""

from __future__ import annotations

import logging
import signal
import threading

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """``with StopRequest() as stop: ... if stop.agreed(): save and exit``.

    Install it as early as possible (the trainer entry does, before the process group starts): a signal that
    arrives during start-up is then a stop request honoured at the first step boundary, not a dead rank.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals, self.received = signals, None
        self._previous: dict = {}

    def _handle(self, signum, _frame) -> None:
        self.received = signal.Signals(signum).name
        log.warning("received %s: saving a checkpoint at the next step boundary, then exiting", self.received)

    def install(self) -> StopRequest:
        """Handle the stop signals from now on (main thread only; elsewhere a no-op). Idempotent."""
        if not self._previous and threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def uninstall(self) -> None:
        """Give the signals back to the handlers they had before :meth:`install`."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __enter__(self) -> StopRequest:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def agreed(self) -> bool:
        """True on every rank when any rank received a stop signal (collective)."""
        flag = torch.tensor([1.0 if self.received else 0.0])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)
