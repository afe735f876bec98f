"""The run folder format as a unit: layout, atomic JSON with reserve, damaged files, finding runs, records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blockkit.contract.errors import WorkflowError
from blockkit.runner._run_folder import RESERVE_BYTES, RUN_FILE, RunFolder, StepRecord, default_runs_dir, find_run


def test_a_new_folder_has_a_unique_safe_name_and_its_layout(tmp_path: Path) -> None:
    a = RunFolder.create(tmp_path, "my flow/../x")
    b = RunFolder.create(tmp_path, "my flow/../x")
    assert a.path != b.path and a.path.parent == tmp_path
    assert "/" not in a.run_id and ".." not in a.run_id and "my-flow----x" in a.run_id
    assert a.output_dir("s") == a.path / "steps/s/output" and a.work_dir("s") == a.path / "steps/s/work"
    assert a.part_dir("s", "f1") == a.path / "steps/s/parts/f1" == a.parts_dir("s") / "f1"
    assert a.split_dir("s") == a.path / "steps/s/split" and a.log_path("s") == a.path / "logs/s.log"


def test_json_is_written_atomically_with_room_for_the_final_state(tmp_path: Path) -> None:
    folder = RunFolder.create(tmp_path, "w")
    folder.write_json(RUN_FILE, {"status": "running", "steps": {}})
    raw = (folder.path / RUN_FILE).read_text()
    assert raw.endswith(" " * RESERVE_BYTES) and json.loads(raw)["status"] == "running"
    assert folder.read_json(RUN_FILE) == {"status": "running", "steps": {}}
    assert not [p for p in folder.path.iterdir() if p.name != RUN_FILE]  # no temp file left


@pytest.mark.parametrize("content, why", [("{not json", "not readable JSON"), ("[1, 2]", "not a JSON object")])
def test_a_damaged_json_file_is_one_workflow_error_naming_it(tmp_path: Path, content: str, why: str) -> None:
    folder = RunFolder.create(tmp_path, "w")
    (folder.path / RUN_FILE).write_text(content)
    with pytest.raises(WorkflowError) as caught:
        folder.read_json(RUN_FILE)
    assert why in caught.value.message and str(folder.path / RUN_FILE) in caught.value.message


def test_find_run_takes_a_unique_prefix_and_only_real_runs(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError, match="no runs in"):
        find_run(tmp_path / "none", "x")
    one = RunFolder.create(tmp_path, "alpha")
    one.write_json(RUN_FILE, {})
    (tmp_path / "zz-no-run-json").mkdir()
    assert find_run(tmp_path, one.run_id[:12]).path == one.path
    with pytest.raises(WorkflowError, match="no run matching 'zz'"):
        find_run(tmp_path, "zz")
    two = RunFolder.create(tmp_path, "alpha")
    two.write_json(RUN_FILE, {})
    with pytest.raises(WorkflowError, match="2 runs matching"):
        find_run(tmp_path, one.run_id[:8])


def test_records_read_back_ignore_unknown_keys_and_default_parts(tmp_path: Path) -> None:
    rec = StepRecord.from_json({"name": "s", "status": "ok", "from_the_future": 1})
    assert rec.name == "s" and rec.status == "ok" and rec.parts == [] and rec.outputs == {}


def test_the_runs_dir_comes_from_the_environment_or_the_current_folder(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOCKKIT_RUNS_DIR", str(tmp_path / "r"))
    assert default_runs_dir() == tmp_path / "r"
    monkeypatch.delenv("BLOCKKIT_RUNS_DIR")
    monkeypatch.chdir(tmp_path)
    assert default_runs_dir() == tmp_path / ".blockkit" / "runs"
