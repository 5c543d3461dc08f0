"""What a compression method is measured by: KV bytes held in the cache, peak memory, wall time.

Everything here reads the real objects (cache tensors, /proc, CUDA allocator); nothing is computed from a
method's claimed ratio.
"""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path

import torch
from transformers import DynamicCache

log = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def cache_bytes(cache: DynamicCache) -> int:
    """Bytes of the keys and values of all layers of `cache` (each `[batch, kv_heads, seq, head_dim]`)."""
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers if layer.keys is not None)


def bytes_per_position(cache: DynamicCache) -> int:
    """Bytes one sequence position takes in `cache`, summed over layers, keys and values."""
    total = 0
    for layer in cache.layers:
        keys, values = layer.keys, layer.values
        total += keys[:, :, :1].nbytes + values[:, :, :1].nbytes
    return total


class PeakMemory:
    """Context manager measuring peak memory (bytes) inside the block.

    On CUDA it is the peak of `torch.cuda.max_memory_allocated` on `device` (reset on entry). On CPU it is the
    process's peak resident set size (`VmHWM`), reset on entry by writing 5 to `/proc/self/clear_refs`
    (Linux); where that reset is not allowed the lifetime peak (`ru_maxrss`) is reported and a warning logged
    once. Either way the number includes the model weights and everything else the process holds.
    """

    _warned = False

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.peak_bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._reset_rss_peak()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak_bytes = _rss_peak_bytes()

    @classmethod
    def _reset_rss_peak(cls) -> None:
        try:
            _CLEAR_REFS.write_text("5")
        except OSError as err:
            if not cls._warned:
                log.warning("cannot reset peak RSS (%s); peak_rss_bytes is the process lifetime peak", err)
                cls._warned = True


def _rss_peak_bytes() -> int:
    """Peak resident set size of this process in bytes (VmHWM, else ru_maxrss)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Clock:
    """Wall-clock laps in seconds; synchronises CUDA before each reading so GPU work is counted."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._last = self._now()

    def lap(self) -> float:
        """Seconds since the previous lap (or since construction)."""
        now = self._now()
        elapsed, self._last = now - self._last, now
        return elapsed

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()
