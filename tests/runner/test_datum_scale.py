"""The datum cache at scale: the bookkeeping of a scattered step grows with its features, not their square.

Real runs on the process engine. Before this, every feature's change of state rewrote the
whole run.json and provenance.json, and every reused feature read the whole cache index and
its producer's whole run.json again: a re-run of 400 features with one changed took 6.9 s,
of which 6 s were those reads and writes (benchmarks/bench_datum.py --features 400).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

import blockkit.runner._run as run_module
from blockkit.runner._cache import CacheIndex
from blockkit.runner._run_folder import RUN_FILE, RunFolder

from .test_datum import (
    assert_same_as_full_run,
    features_run,
    record,
    run,
    statuses,
    workflow,
    write_input,
)

FORTY = [(f"s{i}", f"scene {i}") for i in range(40)]


class _Count:
    """Counts calls of a method and still calls it (a spy: nothing is replaced)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: type, name: str, when=lambda *a, **k: True) -> None:
        self.calls = 0
        real = getattr(owner, name)

        def counted(*args, **kwargs):
            if when(*args, **kwargs):
                self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def test_a_rerun_of_forty_features_writes_run_json_a_few_times_and_reads_the_index_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = tmp_path / "input"
    write_input(inp, FORTY)
    wf = workflow(tmp_path, inp)
    run(tmp_path, wf, jobs=2)
    write_input(inp, [*FORTY[:7], ("s7", "scene 7, changed"), *FORTY[8:]])
    writes = _Count(monkeypatch, RunFolder, "write_json", lambda folder, name, *_: name == RUN_FILE)
    reads = _Count(monkeypatch, CacheIndex, "_read")
    again = run(tmp_path, wf, jobs=2)
    assert features_run(again) == ["s7"]
    assert sum(s == "reused" for s in statuses(again).values()) == 39
    # Once per feature state change before (80 and more); now the run's own few plus a handful.
    assert writes.calls <= 12, writes.calls
    # The step's lookup, the scattered step's one read, the one write of the new entries.
    assert reads.calls <= 4, reads.calls
    assert_same_as_full_run(tmp_path, wf, again)


def _quick_while_slow(tmp_path: Path, slow_s: int, within_s: float) -> tuple[dict[str, str], Path]:
    """Run features `quick` and `slow` (sleeps slow_s) at once; run.json's statuses once `quick`
    reads `ran` there (or after within_s), and the run folder once the run ended."""
    inp = tmp_path / "input"
    write_input(inp, [("quick", "quick"), ("slow", f"SLEEP {slow_s}")])
    wf = workflow(tmp_path, inp)
    done: dict[str, Path] = {}
    runner = threading.Thread(target=lambda: done.update(run_dir=run(tmp_path, wf, jobs=2)))
    runner.start()
    try:
        seen: dict[str, str] = {}
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline and seen.get("quick") != "ran":
            found = list((tmp_path / "runs").glob("*/run.json"))
            try:
                seen = statuses(found[0].parent) if found else {}
            except (ValueError, KeyError):
                seen = {}
            time.sleep(0.05)
    finally:
        runner.join(60)
    return seen, done["run_dir"]


def test_a_finished_feature_reaches_run_json_while_another_still_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records are written late only by the save interval: a timer writes them, not the next event.

    With a 1 s interval the quick feature ends within the interval of the first write; without
    the timer its record would reach disk only when the slow feature (6 s) ended.
    """
    monkeypatch.setattr(run_module, "PART_SAVE_INTERVAL", 1.0)
    seen, run_dir = _quick_while_slow(tmp_path, slow_s=6, within_s=5)
    assert (seen.get("quick"), seen.get("slow")) == ("ran", "running"), seen
    assert statuses(run_dir) == {"quick": "ran", "slow": "ran"}


def test_the_cache_index_names_only_results_their_run_json_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every entry the index gets is already recorded on disk, finished, with that key.

    A runner sharing the cache reads the producer's run.json to check an entry; an entry
    ahead of its record would be evicted as unfinished. The step's own entry used to be
    written before its record said "ok".
    """
    checked: list[str] = []
    real = CacheIndex.store_many

    def checking(index: CacheIndex, results) -> None:
        for key, folder in results:
            rel = folder.relative_to(index.root).as_posix().split("/")
            steps = json.loads((index.root / rel[0] / RUN_FILE).read_text())["steps"]
            if rel[3] == "parts":
                part = next(p for p in steps[rel[2]]["parts"] if p["name"] == rel[4])
                assert (part["status"], part["cache_key"]) == ("ran", key), part
            else:
                assert (steps[rel[2]]["status"], steps[rel[2]]["cache_key"]) == ("ok", key), steps[rel[2]]
            checked.append("/".join(rel))
        real(index, results)

    monkeypatch.setattr(CacheIndex, "store_many", checking)
    inp = tmp_path / "input"
    write_input(inp, FORTY[:5])
    wf = workflow(tmp_path, inp)
    run_dir = run(tmp_path, wf, jobs=2)
    assert sum("/parts/" in c for c in checked) == 5
    assert f"{run_dir.name}/steps/echo/output" in checked
    assert record(run_dir)["status"] == "ok"


def test_checking_a_tree_the_hash_cache_knows_starts_no_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reused feature is checked in the calling thread; files that need reading are still hashed at once."""
    import blockkit.runner._seal as seal
    from blockkit.runner._hashing import HashCache

    pools = _Count(monkeypatch, seal.ThreadPoolExecutor, "__init__")
    folder = tmp_path / "tree"
    (folder / "sub").mkdir(parents=True)
    for n in range(4):
        (folder / f"f{n}.bin").write_bytes(bytes([n]) * 4096)
        (folder / "sub" / f"g{n}.bin").write_bytes(bytes([n + 9]) * 4096)
    hashes = HashCache(tmp_path / "hash-cache.json")
    sealed = seal.seal_tree(folder, hashes, read_only=False)
    assert pools.calls == 1  # eight unknown files in two folders: one pool for both
    assert seal.verify_tree(folder, sealed.files, hashes) is None
    assert pools.calls == 1
    (folder / "sub" / "g2.bin").write_bytes(b"changed")
    assert seal.verify_tree(folder, sealed.files, hashes) == "changed: sub/g2.bin"
    assert pools.calls == 1  # one file to read: no pool either


def test_a_failed_timed_write_is_tried_again_while_a_long_feature_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The timer's first write of the quick feature's record fails (a full disk): it tries again."""
    import errno

    monkeypatch.setattr(run_module, "PART_SAVE_INTERVAL", 1.0)
    failed: list[float] = []
    real = RunFolder.write_json

    def full_disk_once(folder: RunFolder, name: str, data) -> None:
        if name == RUN_FILE and isinstance(threading.current_thread(), threading.Timer) and not failed:
            failed.append(time.monotonic())
            raise OSError(errno.ENOSPC, "No space left on device")
        real(folder, name, data)

    monkeypatch.setattr(RunFolder, "write_json", full_disk_once)
    seen, run_dir = _quick_while_slow(tmp_path, slow_s=8, within_s=6)
    assert failed, "the timer never wrote"
    assert (seen.get("quick"), seen.get("slow")) == ("ran", "running"), seen
    assert statuses(run_dir) == {"quick": "ran", "slow": "ran"}


def test_a_resume_keeps_finished_features_recorded_and_puts_their_cache_entries_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run.json the resumed run writes records the features its first attempt finished.

    The cache index names them: a runner sharing the cache that read a run.json saying
    `pending` would evict them as unfinished. A cache entry the first attempt never wrote
    (here: the index removed) is written when the resumed run checks the feature again.
    """
    from blockkit.runner._run import RunFailed

    inp = tmp_path / "input"
    write_input(inp, [*FORTY[:5], ("s5", "FAIL")])
    wf = workflow(tmp_path, inp)
    with pytest.raises(RunFailed) as caught:
        run(tmp_path, wf, jobs=2, keep_going=True)
    run_dir = caught.value.run_dir
    assert statuses(run_dir) == {**{f"s{i}": "ran" for i in range(5)}, "s5": "failed"}
    (tmp_path / "runs" / "cache-index.json").unlink()
    write_input(inp, [*FORTY[:5], ("s5", "fine now")])
    written: list[dict[str, str]] = []
    real = RunFolder.write_json

    def watching(folder: RunFolder, name: str, data) -> None:
        if name == RUN_FILE and data["steps"]["echo"].get("parts"):
            written.append({p["name"]: p["status"] for p in data["steps"]["echo"]["parts"]})
        real(folder, name, data)

    monkeypatch.setattr(RunFolder, "write_json", watching)
    assert run(tmp_path, wf, jobs=2, resume=run_dir.name) == run_dir
    assert written
    for document in written:
        assert all(document[f"s{i}"] in ("ran", "reused") for i in range(5)), document
    assert features_run(run_dir)[-1:] == ["s5"]
    index = CacheIndex(tmp_path / "runs").entries
    parts = {p["name"]: p["cache_key"] for p in record(run_dir)["parts"]}
    assert {name: index.get(key) for name, key in parts.items()} == {
        name: f"{run_dir.name}/steps/echo/parts/{name}" for name in parts}


def test_a_producer_read_before_it_recorded_a_feature_is_read_again(tmp_path: Path) -> None:
    from blockkit.runner._cache import part_producer

    folder = tmp_path / "r1"
    folder.mkdir()
    part = {"name": "s0", "cache_key": "k", "status": "ran", "outputs": {"data.json": "x"}, "quicklooks": {}}
    (folder / RUN_FILE).write_text(json.dumps({"steps": {"echo": {"parts": [part]}}}))
    kept = {"r1": {"steps": {"echo": {"parts": [{**part, "status": "pending"}]}}}}
    assert part_producer(tmp_path, "r1/steps/echo/parts/s0", "k", kept) == part
    assert kept["r1"]["steps"]["echo"]["parts"] == [part]  # the fresh read is kept
    assert part_producer(tmp_path, "r1/steps/echo/parts/s0", "other key", kept) is None
