"""Sealed step outputs: a block's links, special files and huge files never make the runner misbehave."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from .conftest import Victim, assert_runs_match_provenance, blockkit, one_line_error, run_workflow, workflow_file


def _run_json(tmp_path: Path) -> dict:
    [path] = (tmp_path / "runs").glob("*/run.json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_a_planted_symlink_never_lets_propagation_write_outside(tmp_path: Path, evil, victim: Victim, engine: str) -> None:
    """D1: `/tmp/output/x -> <host dir>`, then the runner forwards `x/payload.sh` of the upstream."""
    wf = workflow_file(tmp_path, (
        "name: escape\nsteps:\n"
        f"  a: {{block: {evil['evil']}, params: {{action: write, arg: 'echo PWNED'}}}}\n"
        f"  b: {{block: {evil['evilprop']}, params: {{action: plant_symlink, arg: '{victim.folder}'}}}}\n"
    ))
    result = run_workflow(tmp_path, wf, engine, "-q")
    assert result.returncode == 6, result.stderr
    line = one_line_error(result.stderr)
    assert "step 'b'" in line and "symlink 'x'" in line and str(victim.folder) in line
    victim.assert_untouched()
    run = _run_json(tmp_path)
    assert run["status"] == "failed" and run["steps"]["b"]["exit_name"] == "NO_OUTPUT_ERROR"
    assert not (tmp_path / "runs" / run["run_id"] / "steps/b/output").exists()  # only accepted outputs live there
    assert_runs_match_provenance(tmp_path / "runs")


@pytest.mark.slow
def test_planted_temp_file_symlinks_never_overwrite_a_host_file(tmp_path: Path, evil, victim: Victim, engine: str) -> None:
    """D1: `.data.json.<pid>.tmp -> <host file>` for every likely runner pid."""
    wf = workflow_file(tmp_path, (
        "name: overwrite\nsteps:\n"
        f"  a: {{block: {evil['evil']}}}\n"
        f"  b: {{block: {evil['evilprop']}, params: {{action: plant_tmp_symlinks, arg: '{victim.file}'}}}}\n"
    ))
    result = run_workflow(tmp_path, wf, engine, "-q")
    assert result.returncode == 6, result.stderr
    assert ".data.json." in one_line_error(result.stderr)
    victim.assert_untouched()
    assert_runs_match_provenance(tmp_path / "runs")


@pytest.mark.slow
def test_a_symlink_inside_a_data_path_folder_is_refused_when_sealing(tmp_path: Path, evil, victim: Victim, engine: str) -> None:
    """D14: refused at once with the path named, not accepted and then failing every later cache hit."""
    wf = workflow_file(tmp_path, f"name: inner\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: symlink_in_dir}}}}\n")
    for _ in range(2):  # never cached: the second run refuses it the same way
        result = run_workflow(tmp_path, wf, engine, "-q")
        assert result.returncode == 6, result.stderr
        line = one_line_error(result.stderr)
        assert "step 'a'" in line and "symlink 'folder/secret.txt' -> 'a.txt'" in line
    assert not (tmp_path / "runs" / "cache-index.json").exists()
    victim.assert_untouched()


@pytest.mark.slow
def test_a_fifo_in_the_output_is_refused(tmp_path: Path, evil, victim: Victim, engine: str) -> None:
    wf = workflow_file(tmp_path, f"name: fifo\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: fifo}}}}\n")
    result = run_workflow(tmp_path, wf, engine, "-q")
    assert result.returncode == 6 and "fifo 'pipe'" in one_line_error(result.stderr)
    victim.assert_untouched()
    assert_runs_match_provenance(tmp_path / "runs")


@pytest.mark.slow
def test_a_30_gib_sparse_file_is_refused_fast(tmp_path: Path, evil, victim: Victim, engine: str) -> None:
    """D13: the output limit stops it before a byte is read; the timeout would bound the hashing anyway."""
    wf = workflow_file(tmp_path, f"name: sparse\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: sparse}}, timeout: 5}}\n")
    started = time.monotonic()
    result = run_workflow(tmp_path, wf, engine, "-q")
    assert time.monotonic() - started < 60
    assert result.returncode == 6, result.stderr
    line = one_line_error(result.stderr)
    assert "more than its limit of 20.0 GiB" in line and "'big.bin'" in line and "max_output" in line
    assert _run_json(tmp_path)["steps"]["a"]["exit_name"] == "NO_OUTPUT_ERROR"
    victim.assert_untouched()
    assert_runs_match_provenance(tmp_path / "runs")


@pytest.mark.slow
def test_the_timeout_covers_hashing_the_output(tmp_path: Path, evil, victim: Victim) -> None:
    """With the size limit raised, hashing 30 GiB of zeros is cut at the step's timeout (124)."""
    wf = workflow_file(tmp_path, (f"name: sparse\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: sparse}}, "
                        "timeout: 3, max_output: 64GiB}\n"))
    started = time.monotonic()
    result = run_workflow(tmp_path, wf, "process", "-q")
    assert time.monotonic() - started < 30
    assert result.returncode == 124, result.stderr
    assert "ran past the step's timeout" in one_line_error(result.stderr)
    victim.assert_untouched()


@pytest.mark.slow
def test_sealed_outputs_are_read_only_and_owned_by_the_runner(tmp_path: Path, evil, engine: str) -> None:
    wf = workflow_file(tmp_path, (
        "name: sealed\nsteps:\n"
        f"  a: {{block: {evil['evil']}}}\n"
        f"  b: {{block: {evil['evilprop']}, params: {{action: many, arg: '3'}}}}\n"
    ))
    result = run_workflow(tmp_path, wf, engine, "-q")
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "runs").glob("*-sealed-*")
    for step in ("a", "b"):
        out = run_dir / "steps" / step / "output"
        assert not (run_dir / "steps" / step / "work").exists()
        for path in [out, *out.rglob("*")]:
            st = path.lstat()
            assert st.st_uid == os.geteuid(), path  # a docker block wrote them as uid 1000
            assert stat.S_IMODE(st.st_mode) == (0o555 if stat.S_ISDIR(st.st_mode) else 0o444), path
    # Forwarded files are the upstream's own (read-only) inodes, not copies.
    b_out = run_dir / "steps/b/output"
    assert (b_out / "x/payload.sh").stat().st_ino == (run_dir / "steps/a/output/x/payload.sh").stat().st_ino
    if os.geteuid() != 0:
        with pytest.raises(PermissionError):
            (b_out / "f00000.bin").open("r+b")
    # The run folder can still be deleted by `rm -r`-like code (read-only folders included).
    from blockkit.runner._seal import remove_tree

    remove_tree(run_dir)
    assert not run_dir.exists()


def test_a_hard_link_to_a_host_file_is_never_chmod_ed(tmp_path: Path, evil, victim: Victim,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A process block hard-links a host file into its output: sealing must not make it read-only (or anything)."""
    # Isolated by bubblewrap the block cannot even see the host file (tests/security/test_isolation.py):
    # the sealing rule is tested where it matters, on the unisolated fallback.
    monkeypatch.setenv("BLOCKKIT_NO_ISOLATION", "1")
    wf = workflow_file(tmp_path, f"name: hl\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: hardlink_victim, arg: '{victim.file}'}}}}\n")
    result = run_workflow(tmp_path, wf, "process", "-q")
    assert result.returncode == 0, result.stderr
    victim.assert_untouched()


def test_the_run_folder_copy_of_the_workflow_has_secrets_redacted(tmp_path: Path, evil) -> None:
    secret = "TOKEN-s3cr3t-VALUE-42"
    wf = workflow_file(tmp_path, (
        "name: secrets\n"
        f"x-common: &common {{token: {secret}, action: write}}\n"
        "steps:\n"
        f"  a: {{block: {evil['secretive']}, params: *common}}  # keep this comment\n"
        f"  b: {{block: {evil['secretive']}, params: {{token: \"{secret}-2\"}}, after: []}}\n"
    ))
    result = run_workflow(tmp_path, wf, "process", "-q")
    assert result.returncode == 0, result.stderr
    [copy] = (tmp_path / "runs").glob("*/workflow.yaml")
    text = copy.read_text()
    assert secret not in text and "keep this comment" in text
    import yaml

    steps = yaml.safe_load(text)["steps"]
    assert steps["a"]["params"]["token"] == "***" and steps["b"]["params"]["token"] == "***"
    assert steps["a"]["params"]["action"] == "write"


@pytest.mark.slow
def test_folders_nested_deep_are_refused_and_cleaned_up(tmp_path: Path, evil, victim: Victim, engine: str) -> None:
    # 300 levels: past the limit, yet shallow enough for pytest's own clean-up if this test fails.
    wf = workflow_file(tmp_path, f"name: deep\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: deep, arg: '300'}}}}\n")
    result = run_workflow(tmp_path, wf, engine, "-q")
    assert result.returncode == 6, result.stderr
    assert "nests folders deeper than 128 levels" in one_line_error(result.stderr)
    run_id = _run_json(tmp_path)["run_id"]
    wf.write_text(wf.read_text().replace("action: deep, arg: '300'", "action: write"))
    resumed = blockkit("run", "--resume", run_id, "-e", engine, "--runs-dir", str(tmp_path / "runs"), "-q", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr  # the rejected tree was removed
    assert not (tmp_path / "runs" / run_id / "steps/a/work").exists()
    victim.assert_untouched()
    assert_runs_match_provenance(tmp_path / "runs")


def test_files_a_block_made_unreadable_are_still_taken_over(tmp_path: Path, evil) -> None:
    from .test_cache import AS_USER

    wf = workflow_file(tmp_path, f"name: unreadable\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: unreadable}}}}\n")
    result = run_workflow(tmp_path, wf, "process", "-q", prefix=AS_USER)
    assert result.returncode == 0, result.stderr
    [out] = (tmp_path / "runs").glob("*/steps/a/output")
    assert (out / "locked/a.bin").read_text() == "hidden\n"
    assert stat.S_IMODE((out / "b.bin").stat().st_mode) == 0o444


@pytest.mark.parametrize("action, mode", [("lock_output", "000"), ("lock_output", "400"), ("lock_output", "600"),
                                          ("lock_sub", "000"), ("lock_sub", "400"), ("lock_sub", "600")])
def test_an_output_folder_the_block_made_unreadable_or_unenterable_is_still_taken_over(tmp_path: Path, evil,
                                                                                       action: str, mode: str) -> None:
    from .test_cache import AS_USER

    wf = workflow_file(tmp_path, f"name: locked\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: {action}, arg: '{mode}'}}}}\n")
    result = run_workflow(tmp_path, wf, "process", "-q", prefix=AS_USER)
    assert result.returncode == 0, result.stderr  # was: exit 1, PermissionError on steps/a/output, 'f' or 'data.json'
    [out] = (tmp_path / "runs").glob("*/steps/a/output")
    assert stat.S_IMODE(out.stat().st_mode) == 0o555 and (out / "data.json").is_file()
    if action == "lock_sub":
        assert stat.S_IMODE((out / "sub").stat().st_mode) == 0o555 and (out / "sub/f").read_text() == "f\n"


def test_a_folder_a_failed_block_made_mode_000_never_blocks_resume_or_removal(tmp_path: Path, evil) -> None:
    from .test_cache import AS_USER

    wf = workflow_file(tmp_path, f"name: locked\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: lock_sub_fail}}}}\n")
    first = run_workflow(tmp_path, wf, "process", "-q", prefix=AS_USER)
    assert first.returncode == 3, first.stderr
    [run_dir] = [path.parent for path in (tmp_path / "runs").glob("*/run.json")]
    again = run_workflow(tmp_path, wf, "process", "-q", "--resume", run_dir.name, prefix=AS_USER)
    assert again.returncode == 3, again.stderr  # the block ran again (was: exit 1, PermissionError on 'sub')
    assert "step 'a'" in one_line_error(again.stderr)
    removed = blockkit("runs", "rm", run_dir.name, "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, prefix=AS_USER)
    assert removed.returncode == 0, removed.stderr
    assert not run_dir.exists()


def _nested_geometry(levels: int) -> dict:
    geometry: dict = {"type": "Point", "coordinates": [0, 0]}
    for _ in range(levels):
        geometry = {"type": "GeometryCollection", "geometries": [geometry]}
    return geometry


def _nested_value(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = {"k": [value]}
    return value


@pytest.mark.parametrize("body, said", [
    ('{"type": "Point", "coordinates": [1e400, 0]}', "number 1e400 is out of range"),
    (json.dumps(_nested_geometry(150)), "nested deeper than 64 levels"),
], ids=["huge-number", "deep-geometry"])
def test_a_data_json_the_runner_could_not_handle_later_is_refused_when_sealing(tmp_path: Path, evil, body, said) -> None:
    """Numbers Python reads as infinity and nesting that recursive readers cannot follow: the block's fault, exit 6."""
    bad = '{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": ' + body + ', "properties": 5}]}'
    wf = workflow_file(tmp_path, f"name: odd\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: raw_datajson, arg: '{bad}'}}}}\n"
                                 f"  b: {{block: {evil['evilprop']}}}\n")
    result = run_workflow(tmp_path, wf, "process", "-q")
    assert result.returncode == 6, result.stderr  # was: exit 0 and the next step blamed, or RecursionError (exit 1)
    line = one_line_error(result.stderr)
    assert "step 'a'" in line and said in line
    run = _run_json(tmp_path)
    assert run["steps"]["a"]["exit_name"] == "NO_OUTPUT_ERROR" and run["steps"]["b"]["status"] == "pending"
    [step] = (tmp_path / "runs").glob("*/steps/a")
    assert not (step / "output").exists() and (step / "work/data.json").is_file()  # rejected: left where it was written
    assert str(step / "output") not in line  # the line names where the rejected file is now


def test_deep_properties_are_refused_when_sealing_not_when_the_next_step_copies_them(tmp_path: Path, evil) -> None:
    props = json.dumps({"deep": _nested_value(300)})
    bad = '{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": null, "properties": ' + props + '}]}'
    wf = workflow_file(tmp_path, f"name: odd\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: raw_datajson, arg: '{bad}'}}}}\n"
                                 f"  c: {{block: {evil['evil']}, after: []}}\n"
                                 f"  r: {{block: {evil['evilproc']}, after: [a, c]}}\n")
    result = run_workflow(tmp_path, wf, "process", "-q", "--jobs", "1")
    assert result.returncode == 6, result.stderr  # was: accepted, then the fan-in step r failed with RecursionError
    assert "step 'a'" in one_line_error(result.stderr) and "nested deeper than 64 levels" in result.stderr


@pytest.mark.parametrize("scatter", [False, True], ids=["step", "scattered"])
def test_a_data_json_needing_more_memory_than_the_step_has_is_refused_not_read_by_the_runner(
        tmp_path: Path, evil, scatter) -> None:
    """12 MB of `[]` take about 330 MB as Python objects: more than the step's 256 MB, so the runner must not read it."""
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": f"f{n}", "geometry": None, "properties": {}} for n in range(2)]}))
    step = f"{{block: {evil['evilproc']}, params: {{action: wide_datajson, arg: 'lists:4000000'}}{', scatter: features' if scatter else ''}}}"
    wf = workflow_file(tmp_path, f"name: wide\ninput: {inp}\nsteps:\n  a: {step}\n")
    result = run_workflow(tmp_path, wf, "process", "-q", "--max-memory", "256")
    assert result.returncode == 6, result.stderr  # was: read in the runner's own memory (and accepted)
    line = one_line_error(result.stderr)
    assert "step 'a'" in line and "needs more than the step's memory of 256 MB" in line
    [step_dir] = (tmp_path / "runs").glob("*/steps/a")
    rejected = step_dir / "parts/f0/work" if scatter else step_dir / "work"
    assert (rejected / "data.json").is_file() and not (step_dir / "output").exists()


def test_a_scattered_step_s_merged_output_may_use_its_features_memory_together(tmp_path: Path, evil) -> None:
    """Two features of 6 MB of `[]` each fit 256 MB; merged they need ~330 MB: the step had 2 x 256 MB."""
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": f"f{n}", "geometry": None, "properties": {}} for n in range(2)]}))
    wf = workflow_file(tmp_path, f"name: merged\ninput: {inp}\nsteps:\n  a: {{block: {evil['evilproc']}, "
                                 f"params: {{action: wide_datajson, arg: 'lists:2000000'}}, scatter: features}}\n")
    result = run_workflow(tmp_path, wf, "process", "-q", "--max-memory", "256")
    assert result.returncode == 0, result.stderr  # was: NO_OUTPUT_ERROR for the runner's own merged file


def test_the_memory_check_never_imports_a_block_folder_s_own_blockkit(tmp_path: Path, evil) -> None:
    """`blockkit run .` in a block folder: the check's child must not take `./blockkit` for the runner's code."""
    import shutil

    block = tmp_path / "blk"
    shutil.copytree(evil["evil"], block)
    (block / "blockkit").mkdir()
    marker = tmp_path / "ran-on-the-host"
    (block / "blockkit" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('shadowed')\n")
    result = blockkit("run", ".", "-e", "process", "-q", "--runs-dir", str(tmp_path / "runs"), "--params",
                      '{"action": "wide_datajson", "arg": "text:9000000"}', cwd=block)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()  # was: the block folder's blockkit/ ran on the host, outside every sandbox


def test_a_big_data_json_that_fits_the_step_memory_is_accepted(tmp_path: Path, evil) -> None:
    """12 MB of text (past the size read without a check) take about 12 MB of memory: accepted."""
    wf = workflow_file(tmp_path, f"name: big\nsteps:\n  a: {{block: {evil['evil']}, "
                                 f"params: {{action: wide_datajson, arg: 'text:12000000'}}}}\n")
    result = run_workflow(tmp_path, wf, "process", "-q", "--max-memory", "256")
    assert result.returncode == 0, result.stderr
    [output] = (tmp_path / "runs").glob("*/steps/a/output")
    assert len(json.loads((output / "data.json").read_text())["features"][0]["properties"]["wide"]) == 12_000_000


def test_a_propagating_step_that_names_its_result_like_its_input_keeps_both(tmp_path: Path, evil, engine: str) -> None:
    """UP42 blocks write their result under the input's name: forwarding moves the input's file under input/."""
    wf = workflow_file(tmp_path, f"name: same\nsteps:\n  a: {{block: {evil['evil']}, params: {{arg: first}}}}\n"
                                 f"  b: {{block: {evil['evilprop']}, params: {{arg: second}}}}\n")
    result = run_workflow(tmp_path, wf, engine, "-q")
    assert result.returncode == 0, result.stderr  # was: exit 6, "'result.bin' already exists in the output"
    [run] = (tmp_path / "runs").glob("*/steps/b/output")
    out = json.loads((run / "data.json").read_text())
    assert sorted(f["properties"]["up42.data_path"] for f in out["features"]) == [
        "input/result.bin", "input/x/payload.sh", "result.bin", "x/payload.sh"]
    assert (run / "result.bin").read_text() == "second" and (run / "input/result.bin").read_text() == "first"
    assert_runs_match_provenance(tmp_path / "runs")


def test_remove_tree_copes_with_thousands_of_levels_and_read_only_folders(tmp_path: Path) -> None:
    import subprocess

    from blockkit.runner._seal import remove_tree

    top = tmp_path / "deep"
    top.mkdir()
    try:
        fd = os.open(top, os.O_RDONLY)
        for _ in range(1500):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.fchmod(fd, 0o555)
            os.close(fd)
            fd = child
        os.close(fd)
        remove_tree(top)
        assert not top.exists()
    finally:
        if top.exists():
            subprocess.run(["chmod", "-R", "u+rwx", str(top)], check=False)
            subprocess.run(["rm", "-rf", str(top)], check=False)


def test_hard_links_inside_the_output_are_sealed_once(tmp_path: Path, evil) -> None:
    wf = workflow_file(tmp_path, f"name: inside\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: links_inside}}}}\n")
    result = run_workflow(tmp_path, wf, "process", "-q")
    assert result.returncode == 0, result.stderr
    [out] = (tmp_path / "runs").glob("*/steps/a/output")
    for i in range(20):
        assert (out / f"a{i}.bin").stat().st_ino == (out / f"b{i}.bin").stat().st_ino
        assert stat.S_IMODE((out / f"a{i}.bin").stat().st_mode) == 0o444
    assert_runs_match_provenance(tmp_path / "runs")


def test_ids_that_read_alike_stay_unique_in_the_fan_in_input_and_its_forwarding(tmp_path: Path, evil) -> None:
    """Ids `1` and `"1"` are different in GeoJSON; as `<step>:<id>` they would read the same."""
    two = ('{"type": "FeatureCollection", "features": [{"type": "Feature", "id": 1, "geometry": null, "properties": {}}, '
           '{"type": "Feature", "id": "1", "geometry": null, "properties": {}}]}')
    wf = workflow_file(tmp_path, f"name: ids\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: raw_datajson, arg: '{two}'}}}}\n"
                                 f"  c: {{block: {evil['evil']}, after: []}}\n"
                                 f"  r: {{block: {evil['evilprop']}, after: [a, c]}}\n")
    result = run_workflow(tmp_path, wf, "process", "-q")
    assert result.returncode == 0, result.stderr  # was: the fan-in input had 'a:1' twice and step r failed (6)
    [run_dir] = [path.parent for path in (tmp_path / "runs").glob("*/run.json")]
    seen = json.loads((run_dir / "steps/r/input/data.json").read_text())["features"]
    assert [f["id"] for f in seen] == ["a:1", "a:1-2", "c:x", "c:r"]
    out = json.loads((run_dir / "steps/r/output/data.json").read_text())["features"]
    assert [f["id"] for f in out][-4:] == ["a:1", "a:1-2", "c:x", "c:r"]  # forwarded as the step saw them
