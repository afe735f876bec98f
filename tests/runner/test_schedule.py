"""The scheduler's rules, without threads: order, upstreams, budget, failure."""

from __future__ import annotations

import pytest

from blockkit.runner._schedule import Budget, Scheduler, Task


def names(tasks: list[Task]) -> list[str]:
    return [t.name for t in tasks]


def test_independent_steps_start_together_within_the_budget() -> None:
    tasks = [Task(f"s{i}", cpus=1.0, memory_mb=1000) for i in range(4)]
    sched = Scheduler(tasks, Budget(jobs=8, cpus=2.0, memory_mb=64000))
    assert names(sched.ready()) == ["s0", "s1"]
    assert sched.ready() == []
    sched.finish("s0", ok=True)
    assert names(sched.ready()) == ["s2"]


def test_memory_and_jobs_limit_too() -> None:
    tasks = [Task(f"s{i}", cpus=0.5, memory_mb=2048) for i in range(4)]
    assert names(Scheduler(tasks, Budget(jobs=8, cpus=8, memory_mb=4096)).ready()) == ["s0", "s1"]
    assert names(Scheduler(tasks, Budget(jobs=3, cpus=8, memory_mb=64000)).ready()) == ["s0", "s1", "s2"]


def test_a_chain_runs_one_after_another() -> None:
    tasks = [Task("a"), Task("b", ("a",)), Task("c", ("b",))]
    sched = Scheduler(tasks, Budget(jobs=4, cpus=4, memory_mb=8000))
    order = []
    while not sched.done:
        ready = sched.ready()
        assert len(ready) == 1
        order.append(ready[0].name)
        sched.finish(ready[0].name, ok=True)
    assert order == ["a", "b", "c"]


def test_fan_in_waits_for_every_upstream() -> None:
    tasks = [Task("a"), Task("b"), Task("join", ("a", "b"))]
    sched = Scheduler(tasks, Budget(jobs=4, cpus=4, memory_mb=8000))
    assert names(sched.ready()) == ["a", "b"]
    sched.finish("a", ok=True)
    assert sched.ready() == []
    sched.finish("b", ok=True)
    assert names(sched.ready()) == ["join"]


def test_a_step_bigger_than_the_machine_runs_alone() -> None:
    tasks = [Task("big", cpus=4.0, memory_mb=64000), Task("small", cpus=0.5)]
    sched = Scheduler(tasks, Budget(jobs=4, cpus=2, memory_mb=8000))
    assert names(sched.ready()) == ["big"]
    assert sched.ready() == []
    sched.finish("big", ok=True)
    assert names(sched.ready()) == ["small"]


def test_after_a_failure_nothing_new_starts_and_running_ones_finish() -> None:
    tasks = [Task("a"), Task("b"), Task("c"), Task("d", ("a",))]
    sched = Scheduler(tasks, Budget(jobs=2, cpus=2, memory_mb=8000))
    assert names(sched.ready()) == ["a", "b"]
    sched.finish("b", ok=False)
    assert sched.stopping and not sched.done  # a still runs
    assert sched.ready() == []
    sched.finish("a", ok=True)
    assert sched.done
    assert names(sched.pending) == ["c", "d"]


def test_jobs_one_is_the_sequential_order() -> None:
    tasks = [Task("x"), Task("y"), Task("z", ("x",))]
    sched = Scheduler(tasks, Budget(jobs=1, cpus=8, memory_mb=8000))
    order = []
    while not sched.done:
        (task,) = sched.ready()
        order.append(task.name)
        sched.finish(task.name, ok=True)
    assert order == ["x", "y", "z"]


def test_unknown_upstream_and_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        Scheduler([Task("a", ("nope",))], Budget(1, 1, 1))
    with pytest.raises(ValueError, match="unique"):
        Scheduler([Task("a"), Task("a")], Budget(1, 1, 1))


def test_host_budget_is_narrowed_by_limits() -> None:
    host = Budget.of_host()
    assert host.cpus >= 1 and host.memory_mb > 0 and host.jobs >= 1
    narrowed = Budget.of_host(jobs=3, max_cpus=0.5, max_memory_mb=100)
    assert (narrowed.jobs, narrowed.cpus, narrowed.memory_mb) == (3, 0.5, 100)


def test_keep_going_runs_every_branch_that_does_not_wait_for_the_failure() -> None:
    tasks = [Task("a"), Task("b"), Task("c", ("a",)), Task("d", ("c",)), Task("e", ("b",)), Task("f", ("a", "b"))]
    sched = Scheduler(tasks, Budget(jobs=2, cpus=8, memory_mb=8000), keep_going=True)
    assert names(sched.ready()) == ["a", "b"]
    sched.finish("a", ok=False)
    assert not sched.stopping
    assert sched.blocked == ["c", "d", "f"]  # everything downstream of a, however far
    assert names(sched.ready()) == []  # b still runs; nothing else may start yet
    sched.finish("b", ok=True)
    assert names(sched.ready()) == ["e"]
    sched.finish("e", ok=True)
    assert sched.done and sched.pending == []


def test_without_keep_going_a_failure_starts_nothing_new_and_blocks_nothing() -> None:
    sched = Scheduler([Task("a"), Task("b"), Task("c")], Budget(jobs=1, cpus=8, memory_mb=8000))
    assert names(sched.ready()) == ["a"]
    sched.finish("a", ok=False)
    assert sched.stopping and sched.ready() == [] and sched.blocked == [] and sched.done
