"""The cache never reuses a changed result, never crosses engines silently, and blocks cannot corrupt earlier runs."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from .conftest import Victim, assert_runs_match_provenance, blockkit, run_workflow, workflow_file, write_block


def _prov(run_dir: Path) -> dict:
    return json.loads((run_dir / "provenance.json").read_text())


def _run_dir(folder: Path, stdout_stderr: str) -> Path:
    for line in stdout_stderr.splitlines():
        if line.startswith("run ") and " in " in line:
            return Path(line.split(" in ", 1)[1].strip())
    raise AssertionError(stdout_stderr)


def _poison(path: Path, data: bytes, keep_mtime: bool) -> None:
    st = path.stat()
    path.chmod(0o644)  # what an attacker with the runner's uid (or root) does first
    path.write_bytes(data)
    path.chmod(stat.S_IMODE(st.st_mode))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.slow
@pytest.mark.parametrize("keep_mtime", [False, True], ids=["edited", "edited-mtime-restored"])
def test_a_poisoned_cache_entry_is_evicted_and_the_step_runs_again(tmp_path: Path, evil, keep_mtime: bool) -> None:
    """D4: same-size edit of a cached output (with the mtime put back, too) is never reused."""
    wf = workflow_file(tmp_path, (
        "name: cache\nsteps:\n"
        f"  a: {{block: {evil['evil']}, params: {{action: write, arg: ORIGINAL}}}}\n"
        f"  b: {{block: {evil['evilprop']}, params: {{action: many, arg: '2'}}}}\n"
    ))
    first = run_workflow(tmp_path, wf)
    assert first.returncode == 0, first.stderr
    run1 = _run_dir(tmp_path, first.stderr)
    _poison(run1 / "steps/a/output/result.bin", b"POISONED", keep_mtime)

    second = run_workflow(tmp_path, wf)
    assert second.returncode == 0, second.stderr
    assert "a warning: the cached output" in second.stderr and "changed since it was made" in second.stderr
    assert "changed: result.bin" in second.stderr and "evicted" in second.stderr
    run2 = _run_dir(tmp_path, second.stderr)
    prov = _prov(run2)
    assert [s["status"] for s in prov["steps"]] == ["ok", "ok"]  # a re-ran, so b's input changed too
    assert prov["steps"][0]["outputs"]["result.bin"] == hashlib.sha256(b"ORIGINAL").hexdigest()
    assert (run2 / "steps/a/output/result.bin").read_bytes() == b"ORIGINAL"
    index = json.loads((tmp_path / "runs/cache-index.json").read_text())
    assert all(not rel.startswith(run1.name + "/steps/a/") for rel in index.values())
    # The third run reuses the fresh, verified result.
    third = run_workflow(tmp_path, wf)
    assert third.returncode == 0 and "a unchanged: reused" in third.stderr.replace("✔ ", "")


@pytest.mark.slow
def test_resume_re_verifies_finished_steps(tmp_path: Path, evil) -> None:
    wf = workflow_file(tmp_path, (
        "name: resume\nsteps:\n"
        f"  a: {{block: {evil['evil']}, params: {{action: write, arg: ORIGINAL}}}}\n"
        f"  b: {{block: {evil['evilproc']}, params: {{action: exit, arg: '3'}}}}\n"
    ))
    failed = run_workflow(tmp_path, wf)
    assert failed.returncode == 3, failed.stderr
    run_dir = _run_dir(tmp_path, failed.stderr)
    _poison(run_dir / "steps/a/output/result.bin", b"POISONED", keep_mtime=True)
    wf.write_text(wf.read_text().replace("action: exit, arg: '3'", "action: many, arg: '1'"))
    resumed = blockkit("run", "--resume", run_dir.name, "-e", "process", "--runs-dir", str(tmp_path / "runs"),
                       cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "output of step 'a' changed since it finished" in resumed.stderr
    assert (run_dir / "steps/a/output/result.bin").read_bytes() == b"ORIGINAL"
    assert_runs_match_provenance(tmp_path / "runs")


#: Root without the capabilities that bypass file permissions: a normal user's view of modes.
AS_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"] if os.geteuid() == 0 else []


@pytest.mark.slow
def test_a_block_cannot_change_its_input_nor_earlier_runs_through_the_cache(tmp_path: Path, evil) -> None:
    """D5 on the process engine, the runner a normal user: cached and upstream inputs are read-only inodes."""
    wf = workflow_file(tmp_path, f"name: pristine\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: write, arg: PRISTINE}}}}\n")
    first = run_workflow(tmp_path, wf, prefix=AS_USER)
    assert first.returncode == 0, first.stderr
    run1 = _run_dir(tmp_path, first.stderr)
    wf2 = tmp_path / "wf2.yaml"
    wf2.write_text(wf.read_text().replace("name: pristine", "name: tamper")
                   + f"  evil: {{block: {evil['evilproc']}, params: {{action: modify_input}}}}\n")
    second = run_workflow(tmp_path, wf2, prefix=AS_USER)
    assert second.returncode == 0, second.stderr
    assert "a unchanged: reused" in second.stderr.replace("✔ ", "")
    assert "cannot modify" in second.stderr and "modified []" in second.stderr
    assert (run1 / "steps/a/output/result.bin").read_bytes() == b"PRISTINE"
    assert_runs_match_provenance(tmp_path / "runs")


@pytest.mark.slow
def test_an_edited_input_is_caught_before_reuse_on_any_engine(tmp_path: Path, evil, victim: Victim, engine: str) -> None:
    """D5 as root: whatever a block manages to change is detected and never reused silently."""
    wf = workflow_file(tmp_path, (
        "name: tamper\nsteps:\n"
        f"  a: {{block: {evil['evil']}, params: {{action: write, arg: PRISTINE}}}}\n"
        f"  evil: {{block: {evil['evilproc']}, params: {{action: modify_input}}}}\n"
    ))
    first = run_workflow(tmp_path, wf, engine)
    assert first.returncode == 0, first.stderr
    run1 = _run_dir(tmp_path, first.stderr)
    tampered = (run1 / "steps/a/output/result.bin").read_bytes() != b"PRISTINE"
    if engine == "docker":
        assert not tampered and "modified []" in first.stderr  # read-only mount, read-only files
    second = run_workflow(tmp_path, wf, engine)
    assert second.returncode == 0, second.stderr
    if tampered:  # a root process block without a sandbox: caught at the next reuse
        assert "changed since it was made" in second.stderr
    run2 = _run_dir(tmp_path, second.stderr)
    assert (run2 / "steps/a/output/result.bin").read_bytes() == b"PRISTINE"
    prov2 = _prov(run2)
    assert prov2["steps"][0]["outputs"]["result.bin"] == hashlib.sha256(b"PRISTINE").hexdigest()
    victim.assert_untouched()


@pytest.mark.slow
def test_a_cache_hit_names_its_producer(tmp_path: Path, evil) -> None:
    wf = workflow_file(tmp_path, f"name: prod\nsteps:\n  a: {{block: {evil['evil']}}}\n")
    first = run_workflow(tmp_path, wf)
    second = run_workflow(tmp_path, wf)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    step = _prov(_run_dir(tmp_path, second.stderr))["steps"][0]
    assert step["status"] == "cached"
    assert step["produced_by"] == {"run_id": _run_dir(tmp_path, first.stderr).name, "step": "a",
                                   "engine": "process", "image": None, "image_id": None}


@pytest.mark.slow
@pytest.mark.docker
def test_a_cache_hit_never_crosses_engines(tmp_path: Path, evil, docker_client, base_image) -> None:
    wf = workflow_file(tmp_path, f"name: cross\nsteps:\n  a: {{block: {evil['evil']}}}\n")
    assert run_workflow(tmp_path, wf, "process").returncode == 0
    docker = run_workflow(tmp_path, wf, "docker")
    assert docker.returncode == 0, docker.stderr
    assert "▶ a running" in docker.stderr  # not served from the process engine's result
    again = run_workflow(tmp_path, wf, "docker")
    step = _prov(_run_dir(tmp_path, again.stderr))["steps"][0]
    assert step["status"] == "cached" and step["produced_by"]["engine"] == "docker"
    assert step["produced_by"]["image_id"].startswith("sha256:")


@pytest.mark.slow
def test_a_cache_hit_brings_the_step_quicklooks_checked_like_its_output(tmp_path: Path, evil) -> None:
    wf = workflow_file(tmp_path, f"name: ql\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: with_quicklook, arg: ORIGINAL}}}}\n")
    first = run_workflow(tmp_path, wf)
    assert first.returncode == 0, first.stderr
    run1 = _run_dir(tmp_path, first.stderr)
    second = run_workflow(tmp_path, wf)
    assert second.returncode == 0 and "a unchanged: reused" in second.stderr.replace("✔ ", ""), second.stderr
    run2 = _run_dir(tmp_path, second.stderr)
    # Was: no quicklooks folder at all in the run that reused the step.
    assert (run2 / "steps/a/quicklooks/a.png").read_bytes() == b"\x89PNG ORIGINAL"
    assert os.stat(run2 / "steps/a/quicklooks/a.png").st_ino == os.stat(run1 / "steps/a/quicklooks/a.png").st_ino
    assert _prov(run2)["steps"][0]["quicklooks"] == _prov(run1)["steps"][0]["quicklooks"] == {
        "a.png": hashlib.sha256(b"\x89PNG ORIGINAL").hexdigest()}
    # A quicklook changed after the step: never reused silently.
    _poison(run1 / "steps/a/quicklooks/a.png", b"\x89PNG POISONED", keep_mtime=True)
    third = run_workflow(tmp_path, wf)
    assert third.returncode == 0, third.stderr
    assert "quicklooks: changed: a.png" in third.stderr and "evicted" in third.stderr
    run3 = _run_dir(tmp_path, third.stderr)
    assert (run3 / "steps/a/quicklooks/a.png").read_bytes() == b"\x89PNG ORIGINAL"


def test_names_in_a_cache_warning_never_reach_the_terminal_raw(tmp_path: Path, evil) -> None:
    wf = workflow_file(tmp_path, f"name: names\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: write, arg: ORIGINAL}}}}\n")
    first = run_workflow(tmp_path, wf)
    assert first.returncode == 0, first.stderr
    out = _run_dir(tmp_path, first.stderr) / "steps/a/output"
    out.chmod(0o755)
    (out / "x\x1b]8;;evil.invalid\x07y\u202e").write_text("planted")
    out.chmod(0o555)
    second = run_workflow(tmp_path, wf)
    assert second.returncode == 0, second.stderr
    assert "added: x\\x1b]8;;evil.invalid\\x07y\\u202e" in second.stderr
    log = (_run_dir(tmp_path, second.stderr) / "logs/a.log").read_text()
    for text in (second.stderr, log):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
