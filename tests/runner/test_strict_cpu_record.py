"""`--strict-cpu` and the run's budget are recorded in run.json and provenance; a resume keeps them; cache keys ignore them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runner.blocks import make_blocks

BLOCKKIT = Path(sys.executable).with_name("blockkit")


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_"))}
    return subprocess.run([str(BLOCKKIT), *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


def _workflow(tmp_path: Path, behaviour: str = "ok") -> Path:
    blocks = make_blocks(tmp_path / "blocks")
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        "name: strict\nsteps:\n"
        f"  make: {{block: {blocks['source']}, params: {{count: 2}}}}\n"
        f"  up: {{block: {blocks['upper']}, params: {{behaviour: {behaviour}, code: 3}}}}\n"
    )
    return wf


def _run_json(runs: Path, run_id: str | None = None) -> tuple[dict, dict]:
    folder = runs / run_id if run_id else max(runs.glob("*/run.json"), key=lambda p: p.stat().st_mtime).parent
    return json.loads((folder / "run.json").read_text()), json.loads((folder / "provenance.json").read_text())


@pytest.mark.slow
def test_a_process_run_with_and_without_strict_cpu(tmp_path: Path) -> None:
    wf = _workflow(tmp_path)
    runs = tmp_path / "runs"
    capped = cli("run", wf, "--engine", "process", "--runs-dir", runs, "--strict-cpu", "--jobs", "2", "--max-cpus", "1")
    assert capped.returncode == 0, capped.stderr
    assert "--strict-cpu: the process engine cannot cap a step's CPUs" in capped.stdout + capped.stderr
    run, prov = _run_json(runs)
    assert run["resources"] == prov["resources"]
    assert run["resources"]["strict_cpu"] is True
    assert run["resources"]["cpu_capped"] is False  # asked, and the reader sees the process engine did not cap
    assert run["resources"]["budget"] == {"jobs": 2, "cpus": 1.0, "memory_mb": run["resources"]["budget"]["memory_mb"]}
    for name in ("make", "up"):
        step = run["steps"][name]["resources"]
        assert step["strict_cpu"] is True and step["cpu_capped"] is False
        assert 0 < step["cpus"] <= 1.0 and step["memory_mb"] > 0  # the machine type, capped by --max-cpus
    assert [s["resources"] for s in prov["steps"]] == [run["steps"][n]["resources"] for n in ("make", "up")]
    keys = {n: s["cache_key"] for n, s in run["steps"].items()}

    # Without the cap: the same cache keys (a cap changes no output), so the steps are reused.
    plain = cli("run", wf, "--engine", "process", "--runs-dir", runs)
    assert plain.returncode == 0, plain.stderr
    run2, prov2 = _run_json(runs)
    assert run2["run_id"] != run["run_id"]
    assert run2["resources"]["strict_cpu"] is False and run2["resources"]["cpu_capped"] is False
    assert run2["resources"]["budget"]["jobs"] is None  # no --jobs: as many as CPUs and memory fit
    assert {n: (s["status"], s["cache_key"]) for n, s in run2["steps"].items()} == {
        n: ("cached", k) for n, k in keys.items()}
    assert all(s["resources"] == {} for s in run2["steps"].values())  # nothing ran in this run

    fresh = cli("run", wf, "--engine", "process", "--runs-dir", runs, "--no-cache")
    assert fresh.returncode == 0, fresh.stderr
    run3, _ = _run_json(runs)
    assert {n: s["cache_key"] for n, s in run3["steps"].items()} == keys
    assert all(s["resources"]["strict_cpu"] is False for s in run3["steps"].values())


def _failed_run(wf: Path, runs: Path, *flags: str) -> str:
    """A run whose step `up` fails (the workflow's behaviour is `exit`); its run id."""
    wf.write_text(wf.read_text().replace("behaviour: ok", "behaviour: exit"))
    failed = cli("run", wf, "--engine", "process", "--runs-dir", runs, *flags)
    assert failed.returncode != 0
    return _run_json(runs)[0]["run_id"]


def _resumed(wf: Path, runs: Path, run_id: str, *flags: str) -> str:
    """Resume the run with `up` fixed; what it printed."""
    wf.write_text(wf.read_text().replace("behaviour: exit", "behaviour: ok"))
    resumed = cli("run", "--resume", run_id, "--runs-dir", runs, "--engine", "process", *flags)
    assert resumed.returncode == 0, resumed.stderr
    return resumed.stdout + resumed.stderr


@pytest.mark.slow
def test_a_resume_keeps_the_cap_it_was_started_with_and_says_when_told_otherwise(tmp_path: Path) -> None:
    wf = _workflow(tmp_path, behaviour="exit")
    runs = tmp_path / "runs"
    run_id = _failed_run(wf, runs, "--strict-cpu")
    run, _ = _run_json(runs, run_id)
    assert run["steps"]["up"]["status"] == "failed" and run["resources"]["strict_cpu"] is True
    assert "--strict-cpu so far" not in _resumed(wf, runs, run_id)  # no --strict-cpu given
    run, prov = _run_json(runs, run_id)
    assert run["resources"]["strict_cpu"] is True and prov["resources"]["strict_cpu"] is True
    assert run["steps"]["up"]["status"] == "ok" and run["steps"]["up"]["resources"]["strict_cpu"] is True

    # A run started without the cap, resumed with it: the steps still to run are capped, and it is said.
    other = tmp_path / "other"
    first = _failed_run(wf, other)
    said = _resumed(wf, other, first, "--strict-cpu")
    assert f"run {first} ran without --strict-cpu so far; the steps still to run are capped" in said
    run, _ = _run_json(other, first)
    assert run["resources"]["strict_cpu"] is True
    assert run["steps"]["make"]["resources"]["strict_cpu"] is False  # what it ran with, in the first session
    assert run["steps"]["up"]["resources"]["strict_cpu"] is True


@pytest.mark.slow
def test_no_strict_cpu_on_a_resume_lifts_the_cap_for_the_steps_still_to_run(tmp_path: Path) -> None:
    wf = _workflow(tmp_path, behaviour="exit")
    runs = tmp_path / "runs"
    run_id = _failed_run(wf, runs, "--strict-cpu")
    # A second failing session keeps the cap (nothing said): the warning names the last session's.
    again = cli("run", "--resume", run_id, "--runs-dir", runs, "--engine", "process")
    assert again.returncode != 0 and "so far" not in again.stdout + again.stderr
    said = _resumed(wf, runs, run_id, "--no-strict-cpu")
    assert f"run {run_id} ran with --strict-cpu so far; the steps still to run are not capped" in said
    run, prov = _run_json(runs, run_id)
    assert run["resources"]["strict_cpu"] is False and prov["resources"]["strict_cpu"] is False
    assert run["steps"]["make"]["resources"]["strict_cpu"] is True  # what it ran with, in the first session
    assert run["steps"]["up"]["resources"]["strict_cpu"] is False
    # A new run given --no-strict-cpu is simply uncapped (the default), with nothing said.
    plain = cli("run", wf, "--engine", "process", "--runs-dir", tmp_path / "plain", "--no-strict-cpu")
    assert plain.returncode == 0 and "strict-cpu" not in plain.stdout + plain.stderr
    assert _run_json(tmp_path / "plain")[0]["resources"]["strict_cpu"] is False


@pytest.mark.slow
@pytest.mark.docker
def test_a_docker_run_records_the_cap_it_enforced(tmp_path: Path, docker_client, base_image) -> None:
    from blockkit.runner._session import RunRequest, run_request

    from .blocks import write_block
    from .test_cpu_share import QUOTA

    block = write_block(tmp_path / "blocks", "quota", kind="data", source=QUOTA, params={}, machine="small")
    for strict, quota in ((True, ("50000", "50000 100000")), (False, ("-1", "max 100000"))):
        summary = run_request(RunRequest(target=block, runs_dir=tmp_path / "runs", engine="docker",
                                         strict_cpu=strict, use_cache=False))
        folder = Path(summary["run_dir"])
        assert (folder / "steps" / "quota" / "output" / "quota.txt").read_text() in quota
        run = json.loads((folder / "run.json").read_text())
        assert (run["resources"]["strict_cpu"], run["resources"]["cpu_capped"]) == (strict, strict)
        step = run["steps"]["quota"]["resources"]
        assert (step["cpus"], step["strict_cpu"], step["cpu_capped"]) == (0.5, strict, strict)  # machine type small
        assert 0 < step["memory_mb"] <= 2048
