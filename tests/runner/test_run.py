"""Running workflows on the process engine: data passing, provenance, cache, resume, faults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blockkit.runner._run import RunFailed
from blockkit.runner._session import RunRequest, run_request

from .blocks import make_blocks


@pytest.fixture()
def blocks(tmp_path: Path) -> dict[str, Path]:
    return make_blocks(tmp_path / "blocks")


def _workflow(tmp_path: Path, body: str, name: str = "wf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def _run(tmp_path: Path, target: Path, **kw) -> dict:
    events: list[tuple[str, str]] = []
    kw.setdefault("engine", "process")
    summary = run_request(RunRequest(target=target, runs_dir=tmp_path / "runs",
                                     on_event=lambda kind, step, info: events.append((kind, step)), **kw))
    summary["events"] = events
    return summary


def _linear(tmp_path: Path, blocks: dict[str, Path], behaviour: str = "ok") -> Path:
    return _workflow(tmp_path, (
        "name: linear\nsteps:\n"
        f"  make: {{block: {blocks['source']}, params: {{count: 3}}}}\n"
        f"  up: {{block: {blocks['upper']}, params: {{behaviour: {behaviour}}}}}\n"
    ))


def test_linear_run_passes_data_and_records_provenance(tmp_path: Path, blocks: dict[str, Path]) -> None:
    summary = _run(tmp_path, _linear(tmp_path, blocks))
    run_dir = Path(summary["run_dir"])
    out = run_dir / "steps" / "up" / "output"
    fc = json.loads((out / "data.json").read_text())
    assert [f["properties"]["up42.data_path"] for f in fc["features"]] == [f"item{i}.txt.upper" for i in range(3)]
    assert (out / "item1.txt.upper").read_text() == "HELLO 1\n"
    assert fc["features"][0]["properties"]["i"] == 0  # metadata propagated through the step
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["status"] == "ok"
    up = prov["steps"][1]
    assert up["name"] == "up" and up["exit_code"] == 0 and up["engine"] == "process"
    assert set(up["inputs"]) == {"data.json", "item0.txt", "item1.txt", "item2.txt"}
    assert set(up["outputs"]) >= {"data.json", "item0.txt.upper"}
    assert all(len(h) == 64 for h in up["outputs"].values())
    assert up["block"]["source_sha256"] and up["started"] <= up["ended"]
    assert (run_dir / "logs" / "up.log").read_text().count("running processing block") == 1


@pytest.mark.slow
def test_second_run_is_served_from_cache_and_no_cache_forces(tmp_path: Path, blocks: dict[str, Path]) -> None:
    wf = _linear(tmp_path, blocks)
    first = _run(tmp_path, wf)
    second = _run(tmp_path, wf)
    assert ("cached", "make") in second["events"] and ("cached", "up") in second["events"]
    a = Path(first["run_dir"]) / "steps/up/output/item0.txt.upper"
    b = Path(second["run_dir"]) / "steps/up/output/item0.txt.upper"
    assert a.stat().st_ino == b.stat().st_ino  # reused by hard link, not copied
    third = _run(tmp_path, wf, use_cache=False)
    assert ("started", "up") in third["events"]
    # A changed parameter re-runs that step.
    wf.write_text(wf.read_text().replace("count: 3", "count: 4"))
    fourth = _run(tmp_path, wf)
    assert ("started", "make") in fourth["events"] and ("started", "up") in fourth["events"]


@pytest.mark.parametrize("behaviour, code, words", [
    ("crash", 1, "UNEXPECTED_ERROR"),
    ("bad-output", 6, "NO_OUTPUT_ERROR"),
])
def test_failing_step_stops_the_run_and_keeps_earlier_outputs(
    tmp_path: Path, blocks: dict[str, Path], behaviour: str, code: int, words: str
) -> None:
    with pytest.raises(RunFailed) as info:
        _run(tmp_path, _linear(tmp_path, blocks, behaviour))
    err = info.value
    assert err.step == "up" and err.step_exit == code
    assert err.headline() == f"[{words}] {err.message}" and err.message.startswith(f"step 'up' failed with exit code {code}: ")
    assert (err.run_dir / "steps/make/output/data.json").is_file()
    assert not (err.run_dir / "steps/up/output/data.json").exists()
    prov = json.loads((err.run_dir / "provenance.json").read_text())
    assert prov["status"] == "failed" and prov["steps"][1]["status"] == "failed"


@pytest.mark.parametrize("code, name", [(2, "INPUT_PARAMETERS_ERROR"), (3, "NO_INPUT_ERROR"), (5, "API_CONNECTION_ERROR")])
def test_exit_codes_are_named(tmp_path: Path, blocks: dict[str, Path], code: int, name: str) -> None:
    wf = _workflow(tmp_path, (
        "name: codes\nsteps:\n"
        f"  make: {{block: {blocks['source']}}}\n"
        f"  up: {{block: {blocks['upper']}, params: {{behaviour: exit, code: {code}}}}}\n"
    ))
    with pytest.raises(RunFailed) as info:
        _run(tmp_path, wf)
    assert info.value.step_exit == code and name in info.value.headline()


def test_timeout_kills_the_step(tmp_path: Path, blocks: dict[str, Path]) -> None:
    wf = _workflow(tmp_path, (
        "name: slow\nsteps:\n"
        f"  make: {{block: {blocks['source']}}}\n"
        f"  up: {{block: {blocks['upper']}, params: {{behaviour: sleep}}, timeout: 2}}\n"
    ))
    with pytest.raises(RunFailed) as info:
        _run(tmp_path, wf)
    assert "TIMEOUT" in info.value.headline() and "timeout" in info.value.message


def test_resume_finishes_a_failed_run_once_fixed(tmp_path: Path, blocks: dict[str, Path]) -> None:
    wf = _linear(tmp_path, blocks, "crash")
    with pytest.raises(RunFailed) as info:
        _run(tmp_path, wf)
    run_id = info.value.run_dir.name
    make_log = (info.value.run_dir / "logs/make.log").read_text()
    wf.write_text(wf.read_text().replace("behaviour: crash", "behaviour: ok"))
    summary = _run(tmp_path, None, resume=run_id)
    assert summary["run_id"] == run_id
    assert ("skipped", "make") in summary["events"] and ("started", "up") in summary["events"]
    assert (info.value.run_dir / "logs/make.log").read_text() == make_log  # not re-run
    assert (info.value.run_dir / "steps/up/output/item0.txt.upper").read_text() == "HELLO 0\n"


def test_fan_in_merges_upstream_features_with_prefixed_paths(tmp_path: Path, blocks: dict[str, Path]) -> None:
    wf = _workflow(tmp_path, (
        "name: fanin\nsteps:\n"
        f"  a: {{block: {blocks['source']}, params: {{count: 1, text: aaa}}}}\n"
        f"  b: {{block: {blocks['source']}, params: {{count: 2, text: bbb}}, after: []}}\n"
        f"  up: {{block: {blocks['upper']}, after: [a, b]}}\n"
    ))
    summary = _run(tmp_path, wf)
    run_dir = Path(summary["run_dir"])
    merged = json.loads((run_dir / "steps/up/input/data.json").read_text())
    assert [f["properties"]["up42.data_path"] for f in merged["features"]] == ["a/item0.txt", "b/item0.txt", "b/item1.txt"]
    assert [f["id"] for f in merged["features"]] == ["a:item0", "b:item0", "b:item1"]
    # The process engine links upstream files into the input folder instead of copying them.
    assert (run_dir / "steps/up/input/b/item1.txt").stat().st_ino == (run_dir / "steps/b/output/item1.txt").stat().st_ino
    out = json.loads((run_dir / "steps/up/output/data.json").read_text())
    assert len(out["features"]) == 3
    assert (run_dir / "steps/up/output/b_item1.txt.upper").read_text() == "BBB 1\n"


def test_single_block_run_with_local_input_and_output(tmp_path: Path, blocks: dict[str, Path]) -> None:
    first = _run(tmp_path, blocks["source"], params={"count": 1}, output=str(tmp_path / "made"))
    assert first["outputs"] == [str(tmp_path / "made")]
    summary = _run(tmp_path, blocks["upper"], input=str(tmp_path / "made"), output=str(tmp_path / "result"))
    assert (tmp_path / "result" / "item0.txt.upper").read_text() == "HELLO 0\n"
    assert summary["steps"]["upper"]["features_out"] == 1


def test_a_missing_input_folder_is_named_as_the_user_gave_it(tmp_path: Path, blocks: dict[str, Path]) -> None:
    from blockkit.contract.errors import WorkflowError

    with pytest.raises(WorkflowError, match=r"--input 'nowhere' is not a folder .*: an input is a folder holding a data.json"):
        _run(tmp_path, blocks["upper"], input="nowhere")
    wf = _workflow(tmp_path, f"name: w\ninput: nowhere\nsteps:\n  up: {{block: {blocks['upper']}}}\n")
    with pytest.raises(WorkflowError, match=r"\] workflow input 'nowhere' is not a folder"):
        _run(tmp_path, wf)


def test_a_local_output_on_the_command_line_needs_no_key_for_the_workflow_output(tmp_path: Path, blocks) -> None:
    """`--output DIR` replaces `output: s3://...`: the workflow's `keys: {output: ...}` no longer applies."""
    wf = _workflow(tmp_path, f"name: w\noutput: s3://results-bucket/x/\nkeys: {{output: nowhere}}\n"
                             f"steps:\n  make: {{block: {blocks['source']}, params: {{count: 1}}}}\n")
    summary = _run(tmp_path, wf, output=str(tmp_path / "here"))  # was: no key named 'nowhere'
    assert summary["outputs"] == [str(tmp_path / "here")] and (tmp_path / "here" / "item0.txt").is_file()


def test_workflow_level_propagate_forwards_input(tmp_path: Path, blocks: dict[str, Path]) -> None:
    wf = _workflow(tmp_path, (
        "name: fwd\nsteps:\n"
        f"  make: {{block: {blocks['source']}, params: {{count: 1}}}}\n"
        f"  up: {{block: {blocks['upper']}, propagate: true}}\n"
    ))
    run_dir = Path(_run(tmp_path, wf)["run_dir"])
    out = json.loads((run_dir / "steps/up/output/data.json").read_text())
    paths = sorted(f["properties"]["up42.data_path"] for f in out["features"])
    assert paths == ["item0.txt", "item0.txt.upper"]
    assert (run_dir / "steps/up/output/item0.txt").stat().st_ino == (run_dir / "steps/make/output/item0.txt").stat().st_ino


def test_a_step_the_engine_cannot_start_fails_cleanly_and_resumes(tmp_path: Path, blocks: dict[str, Path]) -> None:
    manifest_path = blocks["upper"] / "UP42Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "blockkit": {"command": ["/nonexistent/prog"]}}))
    with pytest.raises(RunFailed) as info:
        _run(tmp_path, _linear(tmp_path, blocks))
    err = info.value
    assert err.step == "up" and err.step_exit == 1
    assert "the process engine could not run the step: cannot start '/nonexistent/prog'" in err.message
    run = json.loads((err.run_dir / "run.json").read_text())
    assert run["status"] == "failed" and run["steps"]["up"]["status"] == "failed"
    assert "could not run the step" in (err.run_dir / "logs/up.log").read_text()

    manifest_path.write_text(json.dumps(manifest))
    summary = _run(tmp_path, None, resume=err.run_dir.name)
    assert summary["steps"]["up"]["status"] == "ok"


def test_an_unexpected_runner_error_leaves_the_run_marked_failed(tmp_path: Path, blocks: dict[str, Path], monkeypatch) -> None:
    from blockkit.runner import _run as run_module

    def broken_forward(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_module, "forward_all", broken_forward)
    wf = _workflow(tmp_path, (
        "name: full\nsteps:\n"
        f"  make: {{block: {blocks['source']}}}\n"
        f"  up: {{block: {blocks['upper']}, propagate: true}}\n"
    ))
    with pytest.raises(RunFailed) as info:
        _run(tmp_path, wf)
    # One line naming the step (the CLI adds the resume command), not an UNEXPECTED_ERROR traceback.
    assert info.value.step == "up" and "step 'up' failed" in info.value.message
    assert "No space left on device" in info.value.message and "\n" not in info.value.message
    [run_json] = (tmp_path / "runs").glob("*/run.json")
    run = json.loads(run_json.read_text())
    assert run["status"] == "failed"
    assert run["steps"]["up"]["status"] == "failed" and "No space left" in run["steps"]["up"]["detail"]
    assert run["steps"]["make"]["status"] == "ok"


@pytest.mark.slow
def test_memory_past_the_machine_type_is_out_of_memory(tmp_path: Path, blocks: dict[str, Path]) -> None:
    with pytest.raises(RunFailed) as info:
        _run(tmp_path, _linear(tmp_path, blocks, "alloc"))  # 3 GB; machine type "small" has 2048 MB
    err = info.value
    assert err.step == "up" and err.step_exit == 137
    assert err.headline().startswith("[OUT_OF_MEMORY] step 'up' failed with exit code 137: ")
    assert "more than its limit of 2048 MB" in err.message and "OUT_OF_MEMORY" not in err.message
    assert json.loads((err.run_dir / "run.json").read_text())["steps"]["up"]["exit_name"] == "OUT_OF_MEMORY"


def test_session_memory_counts_every_process_of_the_session() -> None:
    import subprocess
    import sys

    from blockkit.runner._process_engine import session_memory

    code = (
        "import os, sys, time\n"
        "blob = b'x' * (150 << 20)\n"
        "if os.fork() == 0:\n"
        "    child = b'y' * (100 << 20)\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n" and proc.stdout.readline() == "ready\n"
        used = session_memory(proc.pid)
        # 150 MB shared copy-on-write by parent and child (counted once with PSS) + 100 MB of the child
        assert 240 << 20 < used < 360 << 20, used >> 20
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_symlinked_workflow_file_runs(tmp_path: Path, blocks: dict[str, Path]) -> None:
    """Only a block's output is refused for symlinks; the user's own workflow file may be one."""
    real = _linear(tmp_path, blocks)
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    summary = _run(tmp_path, link)
    assert summary["status"] == "ok"
    prov = json.loads((Path(summary["run_dir"]) / "provenance.json").read_text())
    import hashlib

    assert prov["workflow"]["sha256"] == hashlib.sha256(real.read_bytes()).hexdigest()


def test_the_final_state_is_written_before_the_run_lock_is_released(tmp_path: Path, blocks: dict[str, Path],
                                                                     monkeypatch) -> None:
    """A --resume waiting for the lock must find the run as it ended, not "running" (it once was saved after)."""
    from blockkit.runner._lock import RunLock

    seen: list[str] = []
    release = RunLock.release

    def releasing(self) -> None:
        seen.append(json.loads((self.path.parent / "run.json").read_text())["status"])
        release(self)

    monkeypatch.setattr(RunLock, "release", releasing)
    summary = _run(tmp_path, _linear(tmp_path, blocks))
    assert seen == ["ok"]
    run = json.loads((Path(summary["run_dir"]) / "run.json").read_text())
    assert run["status"] == "ok" and {s["status"] for s in run["steps"].values()} == {"ok"}


def test_an_interrupt_right_after_the_last_step_keeps_its_record_and_cache_entry(tmp_path: Path,
                                                                                 blocks: dict[str, Path]) -> None:
    """The last step's record is written by the run's final save: an interrupt between the two still writes both."""
    from blockkit.contract.errors import RunInterrupted

    def interrupt_when_done(kind: str, step: str, info: dict) -> None:
        if kind == "done" and step == "up":
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted):
        run_request(RunRequest(target=_linear(tmp_path, blocks), runs_dir=tmp_path / "runs", engine="process",
                               on_event=interrupt_when_done))
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file()]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "interrupted" and run["steps"]["up"]["status"] == "ok"
    again = _run(tmp_path, _linear(tmp_path, blocks))  # both steps come from the cache
    assert [kind for kind, _ in again["events"] if kind in ("cached", "started")] == ["cached", "cached"]
