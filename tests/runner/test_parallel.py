"""The scheduler inside the runner: independent steps at once, same results as --jobs 1, failures, stopping."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blockkit.runner._run import RunFailed
from blockkit.runner._session import RunRequest, run_request

from .blocks import make_blocks, write_block

REPO = Path(__file__).resolve().parents[2]
BLOCKKIT = Path(sys.executable).with_name("blockkit")

NAP = '''
import os, sys, time
import blockkit
from blockkit import FeatureCollection

@blockkit.data_block
def nap(query, ctx):
    if ctx.params["fail"]:
        sys.exit(3)
    time.sleep(ctx.params["seconds"])
    ctx.output_path("slept.txt").write_text(ctx.params["token"])
    return FeatureCollection([ctx.new_feature(geometry=None, data_path="slept.txt", id="slept")])

if __name__ == "__main__":
    nap.run()
'''


@pytest.fixture()
def blocks(tmp_path: Path) -> dict[str, Path]:
    found = make_blocks(tmp_path / "blocks")
    found["nap"] = write_block(tmp_path / "blocks", "nap", kind="data", source=NAP, params={
        "seconds": {"type": "number", "default": 1},
        "fail": {"type": "boolean", "default": False},
        "token": {"type": "string", "default": ""},
    })
    return found


def _run(tmp_path: Path, target: Path, runs: str = "runs", **kw) -> dict:
    kw.setdefault("engine", "process")
    return run_request(RunRequest(target=target, runs_dir=tmp_path / runs, **kw))


def _records(run_dir: Path) -> dict[str, dict]:
    return json.loads((run_dir / "run.json").read_text())["steps"]


def _naps(tmp_path: Path, blocks: dict[str, Path], steps: str) -> Path:
    wf = tmp_path / "naps.yaml"
    steps = steps.replace("NAP", str(blocks["nap"])).replace("UPPER", str(blocks["upper"]))
    wf.write_text(f"name: naps\nsteps:\n{steps}")
    return wf


@pytest.mark.slow
def test_independent_steps_run_at_once_and_jobs_1_runs_them_in_turn(tmp_path: Path, blocks: dict[str, Path]) -> None:
    wf = _naps(tmp_path, blocks, "  a: {block: NAP, params: {seconds: 1.5, token: a}}\n"
                                 "  b: {block: NAP, params: {seconds: 1.5, token: b}, after: []}\n")
    both = _records(Path(_run(tmp_path, wf, jobs=2)["run_dir"]))
    a, b = both["a"], both["b"]
    assert a["started"] < b["ended"] and b["started"] < a["ended"], "the two steps did not overlap"
    one = _records(Path(_run(tmp_path, wf, runs="runs1", jobs=1)["run_dir"]))
    assert one["a"]["ended"] <= one["b"]["started"], "--jobs 1 must run one step after another"


@pytest.mark.slow
def test_the_cpu_and_memory_budget_keeps_steps_apart(tmp_path: Path, blocks: dict[str, Path]) -> None:
    """Two `small` steps (0.5 CPU, 2048 MB each): --max-cpus 0.5 or --max-memory 3g leaves room for one at a time."""
    wf = _naps(tmp_path, blocks, "  a: {block: NAP, params: {seconds: 1, token: a}}\n"
                                 "  b: {block: NAP, params: {seconds: 1, token: b}, after: []}\n")
    for runs, limits in (("cpu", {"max_cpus": 0.5}), ("mem", {"max_memory_mb": 3072})):
        recs = _records(Path(_run(tmp_path, wf, runs=runs, **limits)["run_dir"]))
        first, second = sorted((recs["a"], recs["b"]), key=lambda r: r["started"])
        assert first["ended"] <= second["started"], limits


@pytest.mark.slow
def test_fan_out_is_identical_with_jobs_1_and_jobs_4(tmp_path: Path) -> None:
    """Same features, output hashes and cache keys; the run folders hold the same files."""
    wf = REPO / "examples" / "workflows" / "fan-out.yaml"
    cwd = os.getcwd()
    os.chdir(REPO)  # the example names its blocks relative to the repository
    try:
        seq = Path(_run(tmp_path, wf, runs="seq", jobs=1)["run_dir"])
        par = Path(_run(tmp_path, wf, runs="par", jobs=4, max_cpus=2)["run_dir"])
    finally:
        os.chdir(cwd)
    s, p = _records(seq), _records(par)
    assert list(s) == list(p) == ["scene", "ndvi", "low", "mid", "high"]
    for name in s:
        assert p[name]["status"] == s[name]["status"] == "ok"
        assert p[name]["cache_key"] == s[name]["cache_key"], name
        assert p[name]["outputs"] == s[name]["outputs"], name
        assert p[name]["inputs"] == s[name]["inputs"], name
        assert p[name]["features_out"] == s[name]["features_out"] == 1
    # The three thresholds overlapped in the parallel run.
    assert max(p[n]["started"] for n in ("low", "mid", "high")) < min(p[n]["ended"] for n in ("low", "mid", "high"))

    def tree(root: Path) -> set[str]:
        return {str(f.relative_to(root)) for f in root.rglob("*") if f.name != ".lock"}

    assert tree(seq) == tree(par)
    prov_s = json.loads((seq / "provenance.json").read_text())
    prov_p = json.loads((par / "provenance.json").read_text())
    assert [x["name"] for x in prov_s["steps"]] == [x["name"] for x in prov_p["steps"]]
    assert [x["cache_key"] for x in prov_s["steps"]] == [x["cache_key"] for x in prov_p["steps"]]


@pytest.mark.slow
def test_a_failure_starts_nothing_new_lets_running_steps_finish_and_resumes(tmp_path: Path, blocks: dict[str, Path]) -> None:
    wf = _naps(tmp_path, blocks, "  bad: {block: NAP, params: {fail: true}}\n"
                                 "  slow: {block: NAP, params: {seconds: 2, token: s}, after: []}\n"
                                 "  after: {block: UPPER, after: [slow]}\n")
    with pytest.raises(RunFailed) as caught:
        _run(tmp_path, wf, jobs=2)
    assert caught.value.step == "bad"
    recs = _records(caught.value.run_dir)
    assert json.loads((caught.value.run_dir / "run.json").read_text())["status"] == "failed"
    assert recs["bad"]["status"] == "failed" and recs["bad"]["exit_code"] == 3
    assert recs["slow"]["status"] == "ok"  # it was running: it finished
    assert recs["after"]["status"] == "pending"  # it would have started after `slow`: it did not
    wf.write_text(wf.read_text().replace("fail: true", "fail: false"))
    resumed = _run(tmp_path, wf, jobs=2, resume=caught.value.run_dir.name)
    assert {n: s["status"] for n, s in resumed["steps"].items()} == {"bad": "ok", "slow": "ok", "after": "ok"}


@pytest.mark.slow
def test_fail_fast_stops_the_running_steps(tmp_path: Path, blocks: dict[str, Path]) -> None:
    token = secrets.token_hex(8)
    wf = _naps(tmp_path, blocks, "  slow: {block: NAP, params: {seconds: 120, token: " + token + "}}\n"
                                 "  bad: {block: NAP, params: {fail: true, seconds: 1}, after: []}\n")
    began = time.monotonic()
    with pytest.raises(RunFailed) as caught:
        _run(tmp_path, wf, jobs=2, fail_fast=True)
    assert time.monotonic() - began < 60
    assert caught.value.step == "bad"
    recs = _records(caught.value.run_dir)
    assert recs["slow"]["status"] == "interrupted"
    assert "stopped because step 'bad' failed (--fail-fast)" in recs["slow"]["detail"]
    assert _processes_with(token) == []


def _processes_with(token: str) -> list[int]:
    """Processes (of any step) whose environment carries this token (their parameters)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if token.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_every_running_step_of_a_parallel_run(tmp_path: Path, blocks: dict[str, Path],
                                                             sig: signal.Signals, code: int) -> None:
    token = secrets.token_hex(8)
    wf = _naps(tmp_path, blocks, "".join(
        f"  s{i}: {{block: NAP, params: {{seconds: 120, token: {token}}}, after: []}}\n" for i in range(2)))
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_"))}
    proc = subprocess.Popen([str(BLOCKKIT), "run", str(wf), "--engine", "process", "--runs-dir", str(runs),
                             "--jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_processes_with(token)) < 2:
        time.sleep(0.2)
    assert len(_processes_with(token)) >= 2, "both steps should be running"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert _processes_with(token) == []
    run = json.loads(next(runs.glob("*/run.json")).read_text())
    assert run["status"] == "interrupted"
    assert {s["status"] for s in run["steps"].values()} == {"interrupted"}


@pytest.mark.slow
@pytest.mark.docker
def test_sigterm_removes_every_running_container_of_a_parallel_docker_run(tmp_path: Path, blocks: dict[str, Path],
                                                                          docker_client, base_image) -> None:
    token = secrets.token_hex(8)
    wf = _naps(tmp_path, blocks, "".join(
        f"  s{i}: {{block: NAP, params: {{seconds: 120, token: {token}}}, after: []}}\n" for i in range(2)))
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_"))}
    proc = subprocess.Popen([str(BLOCKKIT), "run", str(wf), "--engine", "docker", "--runs-dir", str(runs),
                             "--jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def mine() -> list:
        # The daemon is shared: another run's containers may vanish between the list and their inspect.
        return [c for c in docker_client.containers.list(all=True, filters={"label": "blockkit.step"}, ignore_removed=True)
                if token in " ".join(c.attrs["Config"].get("Env") or [])]

    deadline = time.monotonic() + 240  # the first run may build the block's image
    while time.monotonic() < deadline and len([c for c in mine() if c.status == "running"]) < 2:
        time.sleep(0.5)
    assert len(mine()) >= 2, "both steps should be running"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert mine() == []
    run = json.loads(next(runs.glob("*/run.json")).read_text())
    assert run["status"] == "interrupted"
    assert {s["status"] for s in run["steps"].values()} == {"interrupted"}


SEE = '''
import os, sys, time
import blockkit
from blockkit import FeatureCollection

@blockkit.processing_block
def see(fc, ctx):
    ids = [f.get("id") for f in fc]
    if ctx.params["fail_on"] in ids:
        sys.exit(3)
    time.sleep(ctx.params["sleep"])
    files = sorted(str(p.relative_to(ctx.input_dir)) for p in ctx.input_dir.rglob("*") if p.is_file())
    ctx.output_path("seen.txt").write_text(" ".join(ids) + "|" + " ".join(files))
    return FeatureCollection([ctx.new_feature(geometry=None, data_path="seen.txt", id="seen")])

if __name__ == "__main__":
    see.run()
'''


def _scattered(tmp_path: Path, blocks: dict[str, Path], fail_on: str = "none", sleep: float = 0) -> Path:
    see = write_block(tmp_path / "blocks", "see", kind="processing", source=SEE, params={
        "fail_on": {"type": "string", "default": "none"}, "sleep": {"type": "number", "default": 0}})
    wf = tmp_path / "scatter.yaml"
    wf.write_text("name: scattered\nsteps:\n"
                  f"  make: {{block: {blocks['source']}, params: {{count: 3}}}}\n"
                  f"  see: {{block: {see}, params: {{fail_on: {fail_on}, sleep: {sleep}}}, scatter: features}}\n")
    return wf


@pytest.mark.slow
def test_a_scattered_step_runs_once_per_feature_and_merges_like_the_cwl_export(tmp_path: Path, blocks: dict[str, Path]) -> None:
    wf = _scattered(tmp_path, blocks)
    par = Path(_run(tmp_path, wf, jobs=4)["run_dir"])
    out = par / "steps" / "see" / "output"
    fc = json.loads((out / "data.json").read_text())
    # One run per feature, each seeing its one feature and only that feature's file.
    assert [(out / f"item{i}" / "seen.txt").read_text() for i in range(3)] == [
        f"item{i}|data.json item{i}.txt" for i in range(3)]
    # Merged by blockkit.runtime.scatter.merge: paths under <part>/, ids made unique.
    assert [f["properties"]["up42.data_path"] for f in fc["features"]] == [f"item{i}/seen.txt" for i in range(3)]
    assert [f["id"] for f in fc["features"]] == ["seen", "item1-seen", "item2-seen"]
    assert (par / "logs" / "see.log").read_text().count("running processing block") == 3
    # Each feature's sealed output stays (the datum cache); the merged output links the same files.
    assert (par / "steps/see/parts/item1/output/seen.txt").stat().st_ino == (out / "item1/seen.txt").stat().st_ino
    assert not (par / "steps/see/split").exists() and not (par / "steps/see/parts/item1/input").exists()
    seq = Path(_run(tmp_path, wf, runs="seq", jobs=1)["run_dir"])
    assert _records(seq)["see"]["outputs"] == _records(par)["see"]["outputs"]
    assert _records(seq)["see"]["cache_key"] == _records(par)["see"]["cache_key"]


@pytest.mark.slow
def test_a_failing_feature_fails_the_scattered_step_naming_it(tmp_path: Path, blocks: dict[str, Path]) -> None:
    wf = _scattered(tmp_path, blocks, fail_on="item1")
    with pytest.raises(RunFailed) as caught:
        _run(tmp_path, wf, jobs=2)
    assert caught.value.step == "see" and caught.value.step_exit == 3
    assert "feature 'item1'" in caught.value.message
    # The exit code's name is the headline's: the message does not say it again.
    assert caught.value.headline().count(caught.value.exit_name) == 1, caught.value.headline()
    assert not (caught.value.run_dir / "steps" / "see" / "output").exists()


@pytest.mark.slow
@pytest.mark.docker
def test_a_scattered_step_gives_the_same_output_on_docker(tmp_path: Path, blocks: dict[str, Path],
                                                          docker_client, base_image) -> None:
    wf = _scattered(tmp_path, blocks)
    runs = {engine: Path(_run(tmp_path, wf, runs=engine, engine=engine, jobs=2)["run_dir"]) for engine in ("process", "docker")}
    assert _records(runs["docker"])["see"]["outputs"] == _records(runs["process"])["see"]["outputs"]
    assert (runs["docker"] / "steps/see/output/item2/seen.txt").read_text() == "item2|data.json item2.txt"


@pytest.mark.slow
def test_json_events_name_their_step(tmp_path: Path, blocks: dict[str, Path]) -> None:
    wf = _naps(tmp_path, blocks, "  a: {block: NAP, params: {seconds: 0.5, token: a}}\n"
                                 "  b: {block: NAP, params: {seconds: 0.5, token: b}, after: []}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_"))}
    done = subprocess.run([str(BLOCKKIT), "run", str(wf), "--engine", "process", "--runs-dir", str(tmp_path / "runs"),
                           "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "ok"
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert sorted((e["event"], e["step"]) for e in events) == [("done", "a"), ("done", "b"), ("started", "a"), ("started", "b")]
    assert all(e["features"] == 1 for e in events if e["event"] == "done")


@pytest.mark.slow
@pytest.mark.parametrize("jobs, sig, code", [("2", signal.SIGTERM, 143), ("1", signal.SIGINT, 130)])
def test_a_signal_stops_every_feature_run_of_a_scattered_step(tmp_path: Path, blocks: dict[str, Path],
                                                             jobs: str, sig: signal.Signals, code: int) -> None:
    token = secrets.token_hex(8)
    wf = _scattered(tmp_path, blocks, fail_on=token, sleep=120)
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_"))}
    proc = subprocess.Popen([str(BLOCKKIT), "run", str(wf), "--engine", "process", "--runs-dir", str(runs),
                             "--jobs", jobs], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_processes_with(token)) < int(jobs):
        time.sleep(0.2)
    assert len(_processes_with(token)) >= int(jobs), "the feature runs should be going"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert _processes_with(token) == []
    run = json.loads(next(runs.glob("*/run.json")).read_text())
    assert run["status"] == "interrupted" and run["steps"]["see"]["status"] == "interrupted"
