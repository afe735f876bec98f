"""Which steps may start now: upstreams done, within a resource budget (pure; no threads, no I/O)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Budget:
    """What running steps may use at once: a number of steps, CPUs and memory."""

    jobs: int
    cpus: float
    memory_mb: int

    @classmethod
    def of_host(cls, jobs: int | None = None, max_cpus: float | None = None,
                max_memory_mb: int | None = None) -> Budget:
        """The host's size (CPUs it may use, physical memory), narrowed by the given limits."""
        cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        memory = _host_memory_mb()
        if max_cpus is not None:
            cpus = min(cpus, max_cpus)
        if max_memory_mb is not None:
            memory = min(memory, max_memory_mb)
        return cls(jobs=jobs if jobs is not None else max(1, int(cpus)), cpus=cpus, memory_mb=memory)


def _host_memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError, AttributeError):
        return 1 << 20


@dataclass(frozen=True)
class Task:
    """One step as the scheduler sees it: its name, the steps it waits for, what it needs."""

    name: str
    upstream: tuple[str, ...] = ()
    cpus: float = 1.0
    memory_mb: int = 0


@dataclass
class Scheduler:
    """Hands out steps in plan order as their upstreams finish and the budget allows.

    A step asking for more than the whole budget still runs, alone (it is capped, not
    starved). After a failure no new step starts; running ones are left to finish. With
    `keep_going` (`make -k`) every step that does not wait, directly or through others, for a
    failed step still runs; the ones that do are `blocked` and never start.
    """

    tasks: list[Task]
    budget: Budget
    keep_going: bool = False
    running: dict[str, Task] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    blocked: list[str] = field(default_factory=list)  # in plan order

    def __post_init__(self) -> None:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError("task names must be unique")
        known = set(names)
        for task in self.tasks:
            missing = set(task.upstream) - known
            if missing:
                raise ValueError(f"task {task.name!r} waits for unknown {sorted(missing)}")

    @property
    def stopping(self) -> bool:
        """Whether a step failed, so that nothing new starts (never with keep_going)."""
        return bool(self.failed) and not self.keep_going

    @property
    def pending(self) -> list[Task]:
        """Steps neither started nor finished, in plan order."""
        return [t for t in self.tasks if t.name not in self.running and t.name not in self.finished
                and t.name not in self.failed and t.name not in self.blocked]

    @property
    def done(self) -> bool:
        """Nothing runs and nothing more will start."""
        return not self.running and (self.stopping or not self.pending)

    def ready(self) -> list[Task]:
        """The steps to start now, in plan order; each returned step is marked running."""
        if self.stopping:
            return []
        started: list[Task] = []
        for task in self.pending:
            if any(up not in self.finished for up in task.upstream):
                continue
            if not self._fits(task):
                continue
            self.running[task.name] = task
            started.append(task)
        return started

    def finish(self, name: str, ok: bool) -> None:
        """Record that a running step ended."""
        self.running.pop(name)
        (self.finished if ok else self.failed).add(name)
        if not ok and self.keep_going:
            changed = True
            while changed:  # everything downstream of a failed step, however far
                changed = False
                for task in self.pending:
                    if any(up in self.failed or up in self.blocked for up in task.upstream):
                        self.blocked.append(task.name)
                        changed = True
            self.blocked.sort(key=[t.name for t in self.tasks].index)

    def _fits(self, task: Task) -> bool:
        if not self.running:
            return True  # alone it always runs, even when it asks for more than the budget
        if len(self.running) >= self.budget.jobs:
            return False
        cpus = sum(t.cpus for t in self.running.values()) + task.cpus
        memory = sum(t.memory_mb for t in self.running.values()) + task.memory_mb
        return cpus <= self.budget.cpus + 1e-9 and memory <= self.budget.memory_mb
