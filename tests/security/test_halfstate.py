"""No half-states: every runner-side failure names the step and says how to resume; bad YAML is a clear line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import one_line_error, run_workflow, workflow_file


@pytest.mark.slow
def test_exit_0_without_data_json_is_no_output_error_and_never_cached(tmp_path: Path, evil, victim, engine: str) -> None:
    wf = workflow_file(tmp_path, f"name: nodata\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: no_datajson}}}}\n")
    for _ in range(2):
        result = run_workflow(tmp_path, wf, engine, "-q")
        assert result.returncode == 6, result.stderr
        line = one_line_error(result.stderr)
        assert "step 'a' failed with exit code 6: " in line and "wrote no data.json" in line
        assert "resume with: blockkit run --resume" in result.stderr
    assert not (tmp_path / "runs" / "cache-index.json").exists()
    for run_json in (tmp_path / "runs").glob("*/run.json"):
        run = json.loads(run_json.read_text())
        assert run["status"] == "failed" and run["steps"]["a"]["status"] == "failed"
    victim.assert_untouched()


def _namespace_prefix() -> list[str]:
    """`unshare` into a private mount namespace (as root, or as a mapped root in a user namespace)."""
    if not shutil.which("unshare"):
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("CI=true but unshare (util-linux) is missing")
        pytest.skip("unshare missing")
    prefix = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix.insert(1, "--map-root-user")
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"CI=true but no mount namespace: {probe.stderr.strip()}")
        pytest.skip(f"no mount namespace here: {probe.stderr.strip()}")
    return prefix


def _in_namespace(script: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a private mount namespace (its tmpfs mounts vanish with it); it must print RC=1."""
    result = subprocess.run([*_namespace_prefix(), "sh", "-c", script], capture_output=True, text=True,
                            timeout=timeout, cwd=cwd)
    assert "RC=1" in result.stdout, (result.stdout, result.stderr)
    return result


@pytest.mark.slow
def test_a_full_disk_fails_the_step_by_name_with_the_resume_hint(tmp_path: Path, evil) -> None:
    """D18: runs folder on a 24 MB tmpfs; step b fills it, then the runner's own writes fail."""
    runs = tmp_path / "runs"
    runs.mkdir()
    wf = workflow_file(tmp_path, (
        "name: full\nsteps:\n"
        f"  a: {{block: {evil['evil']}}}\n"
        f"  b: {{block: {evil['evilprop']}, params: {{action: fill}}}}\n"
    ))
    exe = Path(sys.executable).parent / "blockkit"
    script = (
        f"mount -t tmpfs -o size=24m tmpfs {runs} && "
        f"{exe} run {wf} -e process --runs-dir {runs} -q; echo \"RC=$?\"; "
        f"cat {runs}/*/run.json"
    )
    result = _in_namespace(script, tmp_path, timeout=120)
    line = one_line_error(result.stderr)
    assert "step 'b'" in line and "No space left on device" in line and "UNEXPECTED_ERROR" in line
    assert "resume with: blockkit run --resume" in result.stderr
    run = json.loads(result.stdout.split("RC=1", 1)[1])
    assert run["status"] == "failed"
    assert run["steps"]["a"]["status"] == "ok" and run["steps"]["b"]["status"] == "failed"
    assert "No space left on device" in run["steps"]["b"]["detail"]
    assert not list(runs.iterdir())  # the tmpfs lived only in that namespace


@pytest.mark.slow
def test_a_full_output_disk_delivers_nothing_and_a_resume_delivers_all(tmp_path: Path, evil) -> None:
    """The output folder on an 8 MB tmpfs, a 12 MB result: no partial folder ever appears, the run is failed, not ok."""
    out_fs = tmp_path / "outfs"
    out_fs.mkdir()
    runs = tmp_path / "runs"
    wf = workflow_file(tmp_path, f"name: big\nsteps:\n  a: {{block: {evil['evil']}, "
                                 f"params: {{action: wide_datajson, arg: 'text:12000000'}}}}\n")
    exe = Path(sys.executable).parent / "blockkit"
    script = (
        f"mount -t tmpfs -o size=8m tmpfs {out_fs} && "
        f"{exe} run {wf} -e process --runs-dir {runs} -q --output {out_fs}/result --json > {tmp_path}/first.json; "
        f"echo \"RC=$?\"; ls -A {out_fs}; echo LISTED; umount {out_fs} && mount -t tmpfs -o size=64m tmpfs {out_fs} && "
        f"{exe} run --resume $(ls {runs} | grep big) --runs-dir {runs} -q --output {out_fs}; echo \"RESUMED=$?\"; "
        f"ls -A {out_fs}"  # into the mount point itself: an empty folder no rename can replace
    )
    result = _in_namespace(script, tmp_path, timeout=180)
    first, listed = result.stdout.split("RC=1", 1)[1].split("LISTED", 1)
    assert first.split() == []  # was: a full data.json and a truncated file under their final names
    error = json.loads((tmp_path / "first.json").read_text())  # --json: the failure as one object
    assert error["status"] == "failed" and "the results were not delivered" in error["message"]
    assert "No space left on device" in error["message"] and error["resume"].startswith("blockkit run --resume")
    [run] = runs.glob("*-big-*/run.json")
    assert json.loads(run.read_text())["status"] == "ok"  # the resume delivered
    assert "RESUMED=0" in listed and listed.split("RESUMED=0", 1)[1].split() == ["data.json"]


@pytest.mark.slow
def test_a_runs_folder_too_full_to_start_a_run_says_so_and_leaves_no_folder(tmp_path: Path, evil) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    wf = workflow_file(tmp_path, f"name: nospace\nsteps:\n  a: {{block: {evil['evil']}}}\n")
    exe = Path(sys.executable).parent / "blockkit"
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {runs} && (dd if=/dev/zero of={runs}/fill bs=4k 2>/dev/null; "
        f"truncate -s -4096 {runs}/fill) && {exe} run {wf} -e process --runs-dir {runs} -q; echo \"RC=$?\"; ls -A {runs}"
    )
    result = _in_namespace(script, tmp_path, timeout=120)
    line = one_line_error(result.stderr)
    assert f"cannot start a run in {runs}: OSError: No space left on device" in line, line  # was: FileNotFoundError
    left = result.stdout.split("RC=1", 1)[1].split()
    assert not [name for name in left if "-nospace-" in name], left  # no run folder that housekeeping cannot see


@pytest.mark.parametrize(("snippet", "words"), [
    ("params: {[1, 2]: x}", "line 3: a list cannot be a key"),
    ("params: {? {a: 1} : x}", "line 3: a dict cannot be a key"),
    ("params: {n: " + "7" * 5000 + "}", "line 3: an integer of 5000 digits is too long"),
    ("timeout: .inf", "'timeout' must be a positive number of seconds, and finite (not inf)"),
    ("timeout: .nan", "'timeout' must be a positive number of seconds, and finite (not nan)"),
    ("max_output: lots", "'max_output' must be a positive size"),
], ids=["list-key", "mapping-key", "5000-digits", "inf", "nan", "max-output"])
def test_bad_workflow_values_are_one_workflow_error_line(tmp_path: Path, evil, snippet: str, words: str) -> None:
    """D16, D19: not UNEXPECTED_ERROR, not a traceback, not a step killed at once."""
    wf = workflow_file(tmp_path, f"name: bad\nsteps:\n  a: {{block: {evil['evil']}, {snippet}}}\n")
    result = run_workflow(tmp_path, wf)
    assert result.returncode == 4, result.stderr
    line = one_line_error(result.stderr)
    assert line.startswith("[WRONG_INPUT_ERROR]") and words in result.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/run.json"))


def test_max_output_overrides_the_machine_type_limit(tmp_path: Path, evil) -> None:
    wf = workflow_file(tmp_path, f"name: small\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: many, arg: '50'}}, max_output: 1KB}}\n")
    result = run_workflow(tmp_path, wf, "process", "-q")
    assert result.returncode == 6, result.stderr
    assert "more than its limit of 1000 B" in one_line_error(result.stderr)
