"""What else is using the machine while a bench runs: the load average, the CPU time the host
took from this virtual machine (steal), and how fast one core reads memory. Every bench
prints these beside its figures, so that a run the machine or its host slowed says so."""

from __future__ import annotations

import math
import os
import time

import numpy as np


def _cpu_times() -> list[int] | None:
    """The machine's CPU time counters (``/proc/stat``: user ... steal), None where there are none."""
    try:
        with open("/proc/stat") as fh:
            return [int(x) for x in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


_last_cpu_times = _cpu_times()


def load() -> str:
    """The load average, and the share of the CPU time since the last figure that the host
    took from this virtual machine for others (steal): a run the host slowed says so, where
    the load average counts only this machine's own work."""
    global _last_cpu_times
    figure = "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    now = _cpu_times()
    if now is not None and _last_cpu_times is not None and sum(now) > sum(_last_cpu_times):
        spent = [b - a for a, b in zip(_last_cpu_times, now, strict=True)]
        figure += f", stolen {100 * spent[7] / sum(spent):.1f}%"
    _last_cpu_times = now
    return figure


def memory_read_rate(size: int = 512 * 2**20) -> str:
    """How fast one core reads memory now (GB/s, the best of three sums of a fresh ``size``
    array): an IVF scan is bound by it, and on a virtual machine the host's other guests take
    a share of it that neither the load average nor the stolen time shows (on the 10M x 768
    store, searches that took 6-7 ms p50 took 14-17 ms 50 minutes later, with nothing else
    running and no time stolen, when one core read 6 GB/s where it had read 12 that day)."""
    words = np.ones(size // 8, np.uint64)
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        words.sum()
        best = min(best, time.perf_counter() - t)
    return f"memory read {size / best / 1e9:.1f} GB/s (one core)"
