"""A CPU run's torch threads beside other work on the machine.

torch starts one intra-op thread per core, and every parallel op waits for its slowest thread.
When another process keeps a core busy, the thread that shares that core holds up the rest:
beside one busy-looping process, a step of the fast preset on 2 cores took 5x as long with
2 threads as alone, and with 1 thread about as long as alone (BENCHMARKS.md). A
:class:`ThreadGovernor` reads how busy the cores are (``/proc/stat``) about once a second,
takes this process's own CPU time away, and sets torch's threads to the share of the cores
the other work leaves free (at least 1, at most as many as torch started with).

Changing the thread count changes the rounding of some reductions, so a run that must repeat
exactly keeps its threads: only a time budget's run, already paced by the clock, is governed;
any other is told (:func:`busy_note`) when its set-up met such work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

PROC_STAT = Path("/proc/stat")
EVERY = 1.0  # seconds between two looks at the cores
SHORTEST = 0.2  # a forced look over less time than this measures nothing


def busy_seconds(cpus: frozenset[int], text: str | None = None) -> float | None:
    """Seconds the cores ``cpus`` have been busy since boot (user, nice, system, irq, softirq
    and steal time in ``/proc/stat``, or in ``text``); None where that cannot be read."""
    try:
        text = PROC_STAT.read_text() if text is None else text
    except OSError:
        return None
    ticks, seen = 0, 0
    for line in text.splitlines():
        name, *fields = line.split() or [""]
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        try:
            values = [int(f) for f in fields[:8]] + [0] * (8 - len(fields[:8]))
        except ValueError:
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = values
        ticks += user + nice + system + irq + softirq + steal
        seen += 1
    return ticks / os.sysconf("SC_CLK_TCK") if seen == len(cpus) else None


class ThreadGovernor:
    """Sets torch's intra-op threads to the cores other work leaves free; see the module."""

    def __init__(
        self,
        most: int,
        cpus: frozenset[int],
        read: Callable[[], float | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        own: Callable[[], float] = time.process_time,
        set_threads: Callable[[int], None] = torch.set_num_threads,
    ) -> None:
        self.most, self.cpus, self.threads = most, cpus, most
        self.read = read or (lambda: busy_seconds(cpus))
        self.clock, self.own, self.set_threads = clock, own, set_threads
        self.others = 0.0  # cores the other work kept busy over the last look
        self.changes = 0
        self.mark = self._sample()

    def _sample(self) -> tuple[float, float | None, float]:
        return self.clock(), self.read(), self.own()

    def look(self, force: bool = False) -> int | None:
        """The threads the free cores make room for, if a second has passed since the last
        look (or ``force``); else None."""
        now = self.clock()
        if now - self.mark[0] < (SHORTEST if force else EVERY):
            return None
        (t0, busy0, own0), (t1, busy1, own1) = self.mark, self._sample()
        self.mark = (t1, busy1, own1)
        if busy0 is None or busy1 is None:
            return None
        self.others = max(0.0, (busy1 - busy0 - (own1 - own0)) / (t1 - t0))
        free = max(0.0, len(self.cpus) - self.others)
        return max(1, min(self.most, int(self.most * free / len(self.cpus) + 0.5)))

    def tick(self, force: bool = False) -> bool:
        """Look at the cores if a second has passed (or ``force``) and set the threads; True
        when they changed."""
        want = self.look(force)
        if want is None or want == self.threads:
            return False
        self.threads = want
        self.set_threads(want)
        self.changes += 1
        return True

    def restore(self) -> None:
        """Torch's threads as they were before the run."""
        if self.threads != self.most:
            self.threads = self.most
            self.set_threads(self.most)


def busy_note(governor: ThreadGovernor) -> str | None:
    """For a run that keeps its threads: a note when other work has been keeping cores busy
    since the governor was made (the run's set-up), saying what it costs and what to set."""
    want = governor.look(force=True)
    if want is None or want >= governor.most:
        return None
    return (
        f"note: other work is keeping about {governor.others:.1f} of this machine's "
        f"{len(governor.cpus)} cores busy, and torch's {governor.most} threads each wait for "
        "the one that shares a core with it: a step can take several times as long as alone. "
        f"OMP_NUM_THREADS={want} in the command's environment uses the free cores only "
        "(a --time-budget run chooses by itself)"
    )


def governor(device_type: str, distributed: bool) -> ThreadGovernor | None:
    """A governor for a single CPU process whose threads the user left to torch (no
    ``OMP_NUM_THREADS``) on a machine whose cores can be read; else None."""
    if device_type != "cpu" or distributed or os.environ.get("OMP_NUM_THREADS"):
        return None
    getaffinity = getattr(os, "sched_getaffinity", None)
    cpus = frozenset(getaffinity(0) if getaffinity else range(os.cpu_count() or 1))
    most = torch.get_num_threads()
    if most < 2 or busy_seconds(cpus) is None:
        return None
    return ThreadGovernor(most, cpus)
