"""Cache keys and the cache index as units: what a key depends on, concurrent index updates, producers."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from blockkit.contract.errors import WorkflowError
from blockkit.runner._cache import (
    CacheIndex,
    part_key,
    part_producer,
    producer_record,
    step_identity,
    step_key,
    verify_part,
)
from blockkit.runner._hashing import HashCache
from blockkit.runner._seal import seal_tree

IDENTITY = dict(block="b" * 64, params={"x": 1}, mode="DEFAULT", blockkit_version="1", engine="process",
                image_id=None, scatter=None)


def test_a_step_key_changes_with_everything_that_makes_its_result() -> None:
    base = step_key(step_identity(**IDENTITY), {"data.json": "1"}, False)
    assert base == step_key(step_identity(**IDENTITY), {"data.json": "1"}, False)
    for change in ({"params": {"x": 2}}, {"engine": "docker"}, {"image_id": "sha256:1"}, {"mode": "DRY_RUN"},
                   {"block": "c" * 64}, {"blockkit_version": "2"}, {"scatter": "features"}):
        assert step_key(step_identity(**{**IDENTITY, **change}), {"data.json": "1"}, False) != base, change
    assert step_key(step_identity(**IDENTITY), {"data.json": "2"}, False) != base
    assert step_key(step_identity(**IDENTITY), {"data.json": "1"}, True) != base
    assert "scatter" not in step_identity(**IDENTITY)  # unscattered keys stay as before scatter existed


def test_a_feature_key_depends_on_its_input_not_on_its_position_or_name() -> None:
    identity = step_identity(**{**IDENTITY, "scatter": "features"})
    one = part_key(identity, {"data.json": "a", "f.txt": "b"})
    assert one == part_key(identity, {"f.txt": "b", "data.json": "a"})
    assert one != part_key(identity, {"data.json": "a", "f.txt": "c"})
    assert one != step_key(identity, {"data.json": "a", "f.txt": "b"}, False)


def test_concurrent_index_updates_keep_every_entry(tmp_path: Path) -> None:
    index = CacheIndex(tmp_path)
    (tmp_path / "r" / "steps").mkdir(parents=True)

    def store(n: int) -> None:
        for i in range(20):
            index.store(f"k{n}-{i}", tmp_path / "r" / "steps" / f"s{n}-{i}" / "output")

    threads = [threading.Thread(target=store, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(index.entries) == 80 and index.lookup("k3-19") == "r/steps/s3-19/output"
    index.evict("k3-19", "something else")
    assert index.lookup("k3-19") is not None
    index.evict("k3-19", "r/steps/s3-19/output")
    assert index.lookup("k3-19") is None


def test_a_damaged_index_is_empty_for_lookups_and_an_error_for_housekeeping(tmp_path: Path) -> None:
    index = CacheIndex(tmp_path)
    assert index.checked_entries() == {} and index.entries == {}
    index.path.write_text("{broken")
    assert index.entries == {} and index.lookup("k") is None
    with pytest.raises(WorkflowError, match="is damaged"):
        index.checked_entries()
    index.path.write_text("[]")
    with pytest.raises(WorkflowError, match="not a JSON object"):
        index.checked_entries()


def _run_json(root: Path, run: str, steps: dict) -> None:
    (root / run).mkdir(parents=True, exist_ok=True)
    (root / run / "run.json").write_text(json.dumps({"steps": steps}))


def test_producers_are_found_only_for_finished_results_of_that_key(tmp_path: Path) -> None:
    _run_json(tmp_path, "r1", {
        "s": {"cache_key": "k", "status": "ok", "outputs": {"data.json": "h"}},
        "t": {"cache_key": "k", "status": "failed", "outputs": {"data.json": "h"}},
        "p": {"parts": [{"name": "f1", "cache_key": "pk", "status": "ran", "outputs": {}, "quicklooks": {}},
                        {"name": "f2", "cache_key": "pk2", "status": "failed", "outputs": {}, "quicklooks": {}}]},
    })
    assert producer_record(tmp_path, "r1/steps/s/output", "k") is not None
    assert producer_record(tmp_path, "r1/steps/s/output", "other") is None
    assert producer_record(tmp_path, "r1/steps/t/output", "k") is None
    assert producer_record(tmp_path, "../r1/steps/s/output", "k") is None
    assert producer_record(tmp_path, "gone/steps/s/output", "k") is None
    assert part_producer(tmp_path, "r1/steps/p/parts/f1", "pk") is not None
    assert part_producer(tmp_path, "r1/steps/p/parts/f2", "pk2") is None
    assert part_producer(tmp_path, "r1/steps/p/parts/f1", "k") is None
    assert part_producer(tmp_path, "r1/steps/p/output", "pk") is None


def test_a_part_is_verified_on_its_output_and_its_quicklooks(tmp_path: Path) -> None:
    hashes = HashCache()
    part = tmp_path / "part"
    (part / "output").mkdir(parents=True)
    (part / "quicklooks").mkdir()
    (part / "output" / "data.json").write_text("{}")
    (part / "quicklooks" / "ql.png").write_bytes(b"png")
    record = {"outputs": seal_tree(part / "output", hashes, read_only=False).files,
              "quicklooks": seal_tree(part / "quicklooks", hashes, read_only=False).files}
    assert verify_part(part, record, hashes) is None
    (part / "quicklooks" / "ql.png").write_bytes(b"forged")
    assert "quicklooks: changed: ql.png" in (verify_part(part, record, hashes) or "")
    (part / "quicklooks" / "ql.png").unlink()
    os.symlink(part / "output" / "data.json", part / "quicklooks" / "ql.png")
    assert verify_part(part, record, hashes) is not None
    assert verify_part(part, {"outputs": record["outputs"]}, hashes) == "no recorded hashes for its quicklooks"
