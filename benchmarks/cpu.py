"""CPU seconds of a worker's whole process tree: what one task costs the machine, not one process.

A prefork worker spends its CPU in several processes: the main process (the consumer:
it reads messages from the broker, acks them, hands them to the pool and, with ``-E``,
publishes ``task-received``) and the pool children (they run the task, its signals, its
log lines and metrics, and with ``-E`` publish ``task-started`` and ``task-succeeded``).
Timing only the main process, or only throughput, would miss most of it.

:func:`sample` reads user + system time of every process in the tree, as the kernel
accounts it (``psutil.Process.cpu_times()``, ``/proc/<pid>/stat`` on Linux): for each
live process its own time plus the time of its children it has already reaped
(``children_user``/``children_system``, the ``cutime``/``cstime`` fields). A pool child
that exits during the measured window (``--max-tasks-per-child``, a replaced process) is
then still counted once: in its own time while it lives, in its parent's reaped time
after. The difference of two samples taken right before and right after a measured
window is the CPU that window cost, start-up and shutdown excluded.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class TreeCpu:
    """CPU seconds (user + system) of a process tree at one moment."""

    #: The root process (a worker's main process), with the children it has reaped.
    main: float
    #: The live descendants (a prefork worker's pool), each with what it has reaped.
    children: float
    #: The pids of the live descendants when sampled.
    child_pids: frozenset[int]

    @property
    def total(self) -> float:
        return self.main + self.children

    def __sub__(self, earlier: TreeCpu) -> TreeCpu:
        """The CPU spent between ``earlier`` and this sample (pids: this sample's)."""
        return TreeCpu(
            main=self.main - earlier.main,
            children=self.children - earlier.children,
            child_pids=self.child_pids,
        )


def _seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


def sample(pid: int) -> TreeCpu:
    """The CPU seconds of ``pid`` and every live descendant of it, right now.

    The root is read last: a descendant that exits between the listing and its reading
    is skipped, and its time is in the root's reaped time once reaped. (One reaped
    right after its own reading would count twice; a prefork pool keeps its children
    for the worker's whole life unless told otherwise, so neither happens in a run.)
    """
    root = psutil.Process(pid)
    children = root.children(recursive=True)
    spent = 0.0
    alive = set()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            spent += _seconds(child)
            alive.add(child.pid)
    return TreeCpu(main=_seconds(root), children=spent, child_pids=frozenset(alive))
