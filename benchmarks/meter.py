"""What a benchmark measures of a run: wall time, CPU of the process tree, and the cores
that everything else on the machine kept busy meanwhile (this machine is shared and noisy).

A module of its own so that every benchmark script imports it, and none imports another.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and all its descendants so far.

    Children reaped by now are in RUSAGE_CHILDREN; live ones (cluster workers) are read
    with psutil, with what they reaped themselves. A child alive at the first call and
    reaped before the second is counted exactly once in the difference.
    """
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    try:
        import psutil
    except ImportError:
        return total
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def system_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot (0.0 without /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall time, CPU of this process tree, and cores kept busy by everything else."""

    def __enter__(self) -> Meter:
        self.c0, self.s0, self.t0 = cpu_seconds(), system_busy(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.cpu = cpu_seconds() - self.c0
        self.others = max(0.0, system_busy() - self.s0 - self.cpu) / self.seconds

    def result(self) -> dict[str, float]:
        return {"seconds": self.seconds, "cpu_seconds": self.cpu, "background_cores": self.others}
