"""What a computation costs in memory: the peak it needed above what was in use when it started.

On CUDA, the allocator's peak (`torch.cuda.max_memory_allocated`) above the allocation at the start.
On CPU, the process's peak resident set size above its size at the start: RSS sampled every
`interval` seconds by a background thread, and on Linux the kernel's exact high-water mark
(`ru_maxrss`) when the computation raised it. Approximate on CPU: memory the allocator kept from
earlier work and reuses does not show as an increase.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
import torch


MIB = 2**20


@dataclass
class Peak:
    mib: float = 0.0  # set when the context exits


def _high_water_mark() -> int | None:
    """The process's lifetime peak RSS in bytes, where the kernel reports it (Linux, in KiB)."""
    if not sys.platform.startswith("linux"):
        return None
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_freed_memory() -> None:
    """Hand memory freed earlier back to the OS (glibc's malloc_trim), so that a CPU peak is measured
    above the live set, not above heap pages kept from earlier work (which the measured computation
    would reuse without growing the RSS). A no-op where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)


@contextmanager
def peak_memory(device: str | torch.device = "cpu", interval: float = 0.05) -> Iterator[Peak]:
    """`with peak_memory(device) as peak: ...`, then `peak.mib`: the peak increase, in MiB."""
    peak = Peak()
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield peak
        finally:
            torch.cuda.synchronize(device)
            peak.mib = max(torch.cuda.max_memory_allocated(device) - start, 0) / MIB
        return
    process = psutil.Process()
    start, mark = process.memory_info().rss, _high_water_mark()
    highest = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            highest[0] = max(highest[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, name="peak-memory", daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()
        top = max(highest[0], process.memory_info().rss)
        end_mark = _high_water_mark()
        if mark is not None and end_mark is not None and end_mark > mark:  # a new lifetime peak: exact
            top = max(top, end_mark)
        peak.mib = max(top - start, 0) / MIB
