"""The datum cache: a scattered step re-runs only the features whose input changed; --keep-going.

Real runs on the process engine (and Docker where marked): a workflow whose input folder
holds N features, a scattered block that writes one file and one quicklook per feature.
Each re-run is compared byte for byte with a full run of the same input in an empty runs dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from blockkit.runner._run import RunFailed
from blockkit.runner._session import RunRequest, run_request

from .blocks import make_blocks, write_block

BLOCKKIT = Path(sys.executable).with_name("blockkit")

ECHO = '''
import sys, time
import blockkit
from blockkit import FeatureCollection

@blockkit.processing_block
def echo(fc, ctx):
    out = []
    for f in fc:
        text = ctx.input_path(f).read_text()
        if "FAIL" in text:
            print(f"[WRONG_INPUT_ERROR] feature {f.get('id')} says FAIL", file=sys.stderr)
            sys.exit(3)
        if "SLOW" in text:
            time.sleep(120)
        if text.startswith("SLEEP "):
            time.sleep(float(text.split()[1]))
        if text in ("NODATA", "BADDATA"):  # exits 0 with no data.json, or one naming a missing file
            out_dir = ctx.output_path("x").parent
            (out_dir / "left.txt").write_text("half a result")
            if text == "BADDATA":
                (out_dir / "data.json").write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", '
                                                   '"geometry": null, "properties": {"up42.data_path": "gone.txt"}}]}')
            import os
            os._exit(0)
        ctx.output_path("echo.txt").write_text(text.upper() + ctx.params["suffix"])
        ctx.quicklook_path("ql").write_bytes(b"PNG" + text.encode())
        out.append(ctx.derive_feature(f, data_path="echo.txt", properties={"echoed": True},
                                      id="out" if len(fc) == 1 else None))  # scattered: every part says "out"
    return FeatureCollection(out)

if __name__ == "__main__":
    echo.run()
'''


def _feature(ident: str | None, rel: str) -> dict:
    feature: dict = {"type": "Feature", "geometry": None, "properties": {"up42.data_path": rel}}
    if ident is not None:
        feature["id"] = ident
    return feature


def write_input(folder: Path, items: list[tuple[str | None, str]]) -> None:
    """The workflow input: one feature per (id, file content), file `f<n>.txt`."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    features = []
    for ident, text in items:
        rel = f"f-{hashlib.sha256(text.encode()).hexdigest()[:8]}.txt"  # not its position: keys stay
        (folder / rel).write_text(text)
        features.append(_feature(ident, rel))
    (folder / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def workflow(tmp_path: Path, input_dir: Path, *, after: str = "") -> Path:
    echo = write_block(tmp_path / "blocks", "echo", kind="processing", source=ECHO,
                       params={"suffix": {"type": "string", "default": "!"}})
    wf = tmp_path / "datum.yaml"
    wf.write_text(f"name: datum\ninput: {input_dir}\nsteps:\n"
                  f"  echo: {{block: {echo}, scatter: features}}\n{after}")
    return wf


def run(tmp_path: Path, wf: Path, runs: str = "runs", **kw) -> Path:
    kw.setdefault("engine", "process")
    return Path(run_request(RunRequest(target=wf, runs_dir=tmp_path / runs, **kw))["run_dir"])


def record(run_dir: Path, step: str = "echo") -> dict:
    return json.loads((run_dir / "run.json").read_text())["steps"][step]


def statuses(run_dir: Path, step: str = "echo") -> dict[str, str]:
    return {p["name"]: p["status"] for p in record(run_dir, step)["parts"]}


def features_run(run_dir: Path, step: str = "echo") -> list[str]:
    """The features whose block ran in this run, from the step's log."""
    text = (run_dir / "logs" / f"{step}.log").read_text()
    return [line.split()[-1] for line in text.splitlines() if line.startswith("[blockkit] feature ")]


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_as_full_run(tmp_path: Path, wf: Path, incremental: Path, engine: str = "process") -> None:
    """The incremental run's merged output and quicklooks equal a full run's, byte for byte."""
    full = run(tmp_path, wf, runs=f"full-{incremental.name}", engine=engine)
    assert len(features_run(full)) == len(record(full)["parts"])
    for sub in ("output", "quicklooks"):
        assert tree(incremental / "steps/echo" / sub) == tree(full / "steps/echo" / sub), sub
    assert record(incremental)["outputs"] == record(full)["outputs"]
    assert record(incremental)["cache_key"] == record(full)["cache_key"]
    assert [p["cache_key"] for p in record(incremental)["parts"]] == [p["cache_key"] for p in record(full)["parts"]]


EIGHT = [(f"s{i}", f"scene {i}") for i in range(8)]


@pytest.mark.slow
@pytest.mark.parametrize("change", ["edit", "add", "remove"])
def test_a_rerun_executes_only_the_changed_feature(tmp_path: Path, change: str) -> None:
    inp = tmp_path / "input"
    write_input(inp, EIGHT[:4])
    wf = workflow(tmp_path, inp)
    first = run(tmp_path, wf, jobs=2)
    assert sorted(features_run(first)) == ["s0", "s1", "s2", "s3"]
    assert set(statuses(first).values()) == {"ran"}
    items = list(EIGHT[:4])
    if change == "edit":
        items[2] = ("s2", "scene 2, reprocessed")
    elif change == "add":
        items.insert(1, ("new", "a new scene"))
    else:
        del items[1]
    write_input(inp, items)
    second = run(tmp_path, wf, jobs=2)
    expected = {"edit": ["s2"], "add": ["new"], "remove": []}[change]
    assert features_run(second) == expected
    assert [n for n, s in statuses(second).items() if s == "ran"] == expected
    reused = [p for p in record(second)["parts"] if p["status"] == "reused"]
    assert len(reused) == len(items) - len(expected)
    assert all(p["from"].startswith(f"{first.name}/steps/echo/parts/") for p in reused)
    # The merged output's files are the very same (hard-linked) files as the kept parts'.
    assert (second / "steps/echo/output/s0/echo.txt").read_text() == "SCENE 0!"
    assert (second / "steps/echo/output/s0/echo.txt").stat().st_ino == (second / "steps/echo/parts/s0/output/echo.txt").stat().st_ino
    assert_same_as_full_run(tmp_path, wf, second)


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_changed_feature_starts_before_the_others_are_checked(tmp_path: Path, monkeypatch, jobs: int) -> None:
    """The block of a feature to run starts first; checking the reused ones goes on beside it (or after, --jobs 1).

    In input order, the last feature's block started after the 7 others were checked.
    """
    from blockkit.runner._process_engine import ProcessEngine
    from blockkit.runner._run import WorkflowRun

    inp = tmp_path / "input"
    write_input(inp, EIGHT)
    wf = workflow(tmp_path, inp)
    run(tmp_path, wf, jobs=jobs)
    write_input(inp, [*EIGHT[:7], ("s7", "scene 7, changed")])
    order: list[str] = []
    started = threading.Event()
    run_step, reuse_part = ProcessEngine.run_step, WorkflowRun._reuse_part

    def running(self, spec, *args, **kwargs):
        order.append(f"run {spec.input_dir.parent.name}")
        started.set()
        return run_step(self, spec, *args, **kwargs)

    def reusing(self, step, entry, *args, **kwargs):
        if jobs > 1 and entry["name"] != "s7":
            started.wait(10)  # the checks beside it wait for the run to start: they may not overtake it
        reused = reuse_part(self, step, entry, *args, **kwargs)
        if reused:
            order.append(f"reused {entry['name']}")
        return reused

    monkeypatch.setattr(ProcessEngine, "run_step", running)
    monkeypatch.setattr(WorkflowRun, "_reuse_part", reusing)
    second = run(tmp_path, wf, jobs=jobs)
    assert sorted(order) == sorted(["run s7", *(f"reused s{i}" for i in range(7))]), order
    # First of all (in input order, as before, it started after 7 checks; with 2 at once, after
    # a 10 s wait of the other worker's first check, the 4th or later)
    assert order[0] == "run s7", order
    assert features_run(second) == ["s7"]
    assert [p["name"] for p in record(second)["parts"]] == [f"s{i}" for i in range(8)]  # recorded in input order
    assert_same_as_full_run(tmp_path, wf, second)


@pytest.mark.slow
def test_provenance_says_which_features_ran_and_which_were_reused(tmp_path: Path) -> None:
    inp = tmp_path / "input"
    write_input(inp, EIGHT[:3])
    wf = workflow(tmp_path, inp)
    first = run(tmp_path, wf, jobs=1)
    write_input(inp, [EIGHT[0], ("s1", "changed"), EIGHT[2]])
    events: list[tuple[str, str, dict]] = []
    second = run(tmp_path, wf, jobs=1, on_event=lambda kind, step, info: events.append((kind, step, info)))
    rec = record(second)
    assert rec["detail"] == "3 feature(s): 1 ran (s1), 2 reused"
    assert [(p["name"], p["feature"], p["status"]) for p in rec["parts"]] == [
        ("s0", "s0", "reused"), ("s1", "s1", "ran"), ("s2", "s2", "reused")]
    done = [info for kind, step, info in events if kind == "done" and step == "echo"]
    assert done[0]["features_ran"] == 1 and done[0]["features_reused"] == 2
    prov = json.loads((second / "provenance.json").read_text())
    assert [p["status"] for p in prov["steps"][0]["parts"]] == ["reused", "ran", "reused"]
    assert prov["steps"][0]["parts"][0]["from"] == f"{first.name}/steps/echo/parts/s0"
    shown = subprocess.run([str(BLOCKKIT), "runs", "show", second.name, "--runs-dir", str(tmp_path / "runs")],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "3 feature(s): 1 ran (s1), 2 reused" in shown.stdout
    from blockkit.report import write_report
    from blockkit.report._model import read_report

    step = read_report(second).steps[0]
    assert step["status"] == "ok" and step["detail"] == "3 feature(s): 1 ran (s1), 2 reused"
    html = write_report(second).read_text()
    assert "per feature" in html and "3 feature(s): 1 ran (s1), 2 reused" in html


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["edit", "symlink", "quicklook", "extra-file"])
def test_a_tampered_cached_part_is_evicted_and_run_again(tmp_path: Path, attack: str) -> None:
    inp = tmp_path / "input"
    write_input(inp, EIGHT[:3])
    wf = workflow(tmp_path, inp)
    first = run(tmp_path, wf, jobs=1)
    part = first / "steps/echo/parts/s0"
    target = part / "output" / "echo.txt"
    os.chmod(part / "output", 0o755)
    os.chmod(part / "quicklooks", 0o755)
    if attack == "edit":
        os.chmod(target, 0o644)
        target.write_text("FORGED")  # the same inode: the merged output of run 1 changes too
    elif attack == "symlink":
        secret = tmp_path / "secret.txt"
        secret.write_text("SCENE 0!")
        target.unlink()
        target.symlink_to(secret)
    elif attack == "quicklook":
        os.chmod(part / "quicklooks" / "ql.png", 0o644)
        (part / "quicklooks" / "ql.png").write_bytes(b"FORGED")
    else:
        (part / "output" / "planted.txt").write_text("x")
    write_input(inp, [EIGHT[0], EIGHT[1], ("s2", "changed")])  # the step's key changes: parts decide
    events: list[tuple[str, str, dict]] = []
    second = run(tmp_path, wf, jobs=1, on_event=lambda kind, step, info: events.append((kind, step, info)))
    assert sorted(features_run(second)) == ["s0", "s2"]
    warnings = [info["message"] for kind, _, info in events if kind == "warning"]
    assert len(warnings) == 1 and "feature 's0' changed since it was made" in warnings[0] and "evicted" in warnings[0]
    assert "warning: the cached output" in (second / "logs/echo.log").read_text()
    index = json.loads((tmp_path / "runs" / "cache-index.json").read_text())
    assert f"{first.name}/steps/echo/parts/s0" not in index.values()
    assert (second / "steps/echo/output/s0/echo.txt").read_text() == "SCENE 0!"
    assert not (second / "steps/echo/output/s0/echo.txt").is_symlink()
    assert_same_as_full_run(tmp_path, wf, second)


@pytest.mark.slow
def test_colliding_ids_keep_their_parts_apart_and_merge_like_a_full_run(tmp_path: Path) -> None:
    from blockkit.runtime.scatter import part_name

    inp = tmp_path / "input"
    items: list[tuple[str | None, str]] = [("a b", "spaced"), ("a_b", "plain"), ("data", "reserved name"),
                                           ("../up", "a path id"), (None, "no id")]
    write_input(inp, items)
    wf = workflow(tmp_path, inp)
    first = run(tmp_path, wf, jobs=2)
    names = list(statuses(first))
    assert len(set(names)) == 5 and names[1] == "a_b"
    assert all("/" not in n and n not in ("data", "..") for n in names)
    # A new feature in front whose id is exactly the folder name the "a b" feature got: it takes
    # that name, the old one becomes `<name>-2`; its content did not change, so it is reused.
    taken = part_name({"id": "a b"})
    write_input(inp, [(taken, "an impostor"), *items])
    second = run(tmp_path, wf, jobs=2)
    assert list(statuses(second)) == [taken, f"{taken}-2", *names[1:]]
    assert features_run(second) == [taken]
    assert list(statuses(second).values()) == ["ran"] + ["reused"] * 5
    ids = [f["id"] for f in json.loads((second / "steps/echo/output/data.json").read_text())["features"]]
    assert ids[0] == "out" and len(set(ids)) == len(ids)  # every part says "out": made unique by position
    assert_same_as_full_run(tmp_path, wf, second)


@pytest.mark.slow
def test_resume_runs_only_the_features_a_failed_attempt_did_not_finish(tmp_path: Path) -> None:
    inp = tmp_path / "input"
    write_input(inp, [EIGHT[0], EIGHT[1], ("s2", "FAIL"), EIGHT[3]])
    wf = workflow(tmp_path, inp)
    with pytest.raises(RunFailed) as caught:
        run(tmp_path, wf, jobs=1, use_cache=False)
    run_dir = caught.value.run_dir
    assert caught.value.step_exit == 3 and "feature 's2'" in caught.value.message
    assert statuses(run_dir) == {"s0": "ran", "s1": "ran", "s2": "failed", "s3": "pending"}
    write_input(inp, [EIGHT[0], EIGHT[1], ("s2", "fixed"), EIGHT[3]])
    resumed = run(tmp_path, wf, jobs=1, resume=run_dir.name, use_cache=False)
    assert resumed == run_dir
    assert features_run(run_dir) == ["s2", "s3"]  # the resumed attempt's log
    assert statuses(run_dir) == {"s0": "ran", "s1": "ran", "s2": "ran", "s3": "ran"}
    assert record(run_dir)["status"] == "ok"
    assert_same_as_full_run(tmp_path, wf, run_dir)


@pytest.mark.slow
def test_resume_after_an_interrupt_mid_scatter_runs_only_the_missing_features(tmp_path: Path) -> None:
    import signal
    import time

    inp = tmp_path / "input"
    write_input(inp, [EIGHT[0], ("s1", "SLOW"), EIGHT[2]])
    wf = workflow(tmp_path, inp)
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_"))}
    proc = subprocess.Popen([str(BLOCKKIT), "run", str(wf), "--engine", "process", "--runs-dir", str(runs),
                             "--jobs", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = list(runs.glob("*/run.json"))
        try:
            if found and statuses(found[0].parent).get("s1") == "running":
                break
        except (ValueError, KeyError):
            pass
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    run_dir = found[0].parent
    assert statuses(run_dir)["s0"] == "ran" and statuses(run_dir)["s1"] in ("running", "interrupted")
    write_input(inp, [EIGHT[0], ("s1", "quick now"), EIGHT[2]])
    done = subprocess.run([str(BLOCKKIT), "run", "--resume", run_dir.name, "--engine", "process",
                           "--runs-dir", str(runs), "--jobs", "1", "--no-cache"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert features_run(run_dir) == ["s1", "s2"]
    # The console counts what ran now, not what the interrupted attempt had finished (was: "3 ran").
    assert "3 feature(s) out (2 ran, 1 finished before the resume, 0 reused)" in done.stderr
    assert record(run_dir)["detail"] == "3 feature(s): 2 ran (s1, s2), 1 finished before the resume, 0 reused"
    assert_same_as_full_run(tmp_path, wf, run_dir)


@pytest.mark.slow
def test_keep_going_runs_every_feature_names_each_failure_and_caches_the_rest(tmp_path: Path) -> None:
    inp = tmp_path / "input"
    items = [EIGHT[0], ("s1", "FAIL one"), EIGHT[2], ("s3", "FAIL three"), EIGHT[4]]
    write_input(inp, items)
    wf = workflow(tmp_path, inp)
    with pytest.raises(RunFailed) as caught:
        run(tmp_path, wf, jobs=1)  # without --keep-going: stops at the first failing feature
    assert statuses(caught.value.run_dir) == {"s0": "ran", "s1": "failed", "s2": "pending", "s3": "pending",
                                              "s4": "pending"}
    with pytest.raises(RunFailed) as caught:
        run(tmp_path, wf, jobs=2, keep_going=True)
    err = caught.value
    assert err.step == "echo" and err.step_exit == 3
    assert "2 features failed ('s1', 's3')" in err.message
    assert statuses(err.run_dir) == {"s0": "reused", "s1": "failed", "s2": "ran", "s3": "failed", "s4": "ran"}
    assert not (err.run_dir / "steps/echo/output").exists()
    # Fixed input, a new run: only the two failed features run, the rest comes from the cache.
    write_input(inp, [EIGHT[0], ("s1", "ok one"), EIGHT[2], ("s3", "ok three"), EIGHT[4]])
    again = run(tmp_path, wf, jobs=2, keep_going=True)
    assert sorted(features_run(again)) == ["s1", "s3"]
    assert_same_as_full_run(tmp_path, wf, again)


@pytest.mark.parametrize("how", ["NODATA", "BADDATA"])
def test_a_feature_without_a_valid_output_fails_the_step_and_is_never_cached(tmp_path: Path, how: str) -> None:
    inp = tmp_path / "input"
    write_input(inp, [EIGHT[0], ("s1", how), EIGHT[2]])
    wf = workflow(tmp_path, inp)
    for attempt in range(2):
        with pytest.raises(RunFailed) as caught:
            run(tmp_path, wf, jobs=1, keep_going=True)
        err = caught.value
        assert err.step == "echo" and err.step_exit == 6, err.message  # NO_OUTPUT_ERROR, not a merged result
        assert "feature 's1'" in err.message
        assert ("wrote no data.json" if how == "NODATA" else "'gone.txt' does not exist") in err.message
        # The feature ran again on the second attempt: its result was never recorded or cached.
        assert features_run(err.run_dir) == (["s0", "s1", "s2"] if attempt == 0 else ["s1"])
        assert statuses(err.run_dir)["s1"] == "failed"
        assert not (err.run_dir / "steps/echo/output").exists()
        part = err.run_dir / "steps/echo/parts/s1"
        assert not (part / "output").exists() and (part / "work/left.txt").is_file()  # rejected: left in work/
    with pytest.raises(RunFailed) as caught:
        run(tmp_path, wf, jobs=1, resume=err.run_dir.name)
    assert features_run(caught.value.run_dir) == ["s1"] and caught.value.step_exit == 6


@pytest.mark.slow
def test_keep_going_finishes_independent_steps_and_leaves_dependent_ones_for_resume(tmp_path: Path) -> None:
    inp = tmp_path / "input"
    write_input(inp, [EIGHT[0], ("s1", "FAIL")])
    echo = tmp_path / "blocks" / "echo"
    source = make_blocks(tmp_path / "blocks")["source"]
    after = (f"  other: {{block: {source}, after: []}}\n"
             f"  later: {{block: {echo}, after: [echo], params: {{suffix: '#'}}}}\n"
             f"  last: {{block: {echo}, after: [later], params: {{suffix: '$'}}}}\n")
    wf = workflow(tmp_path, inp, after=after)
    for jobs in (1, 2):
        with pytest.raises(RunFailed) as caught:
            run(tmp_path, wf, runs=f"runs{jobs}", jobs=jobs, keep_going=True)
        steps = json.loads((caught.value.run_dir / "run.json").read_text())["steps"]
        assert {n: s["status"] for n, s in steps.items()} == {
            "echo": "failed", "other": "ok", "later": "pending", "last": "pending"}, jobs
        assert steps["later"]["detail"] == "not run: step 'echo' it waits for did not finish"
        assert steps["last"]["detail"] == "not run: step 'later' it waits for did not finish"
        assert caught.value.step == "echo"
    write_input(inp, [EIGHT[0], ("s1", "fine")])
    resumed = run(tmp_path, wf, runs="runs2", jobs=2, resume=caught.value.run_dir.name)
    steps = json.loads((resumed / "run.json").read_text())["steps"]
    assert {n: s["status"] for n, s in steps.items()} == {"echo": "ok", "other": "ok", "later": "ok", "last": "ok"}
    assert features_run(resumed) == ["s1"]  # s0 kept from the failed attempt


@pytest.mark.slow
def test_two_failing_steps_are_both_named_with_keep_going(tmp_path: Path) -> None:
    inp = tmp_path / "input"
    write_input(inp, [("s0", "FAIL")])
    echo = tmp_path / "blocks" / "echo"
    wf = workflow(tmp_path, inp, after=f"  other: {{block: {echo}, after: [], params: {{suffix: '?'}}}}\n")
    done = subprocess.run([str(BLOCKKIT), "run", str(wf), "--engine", "process", "--runs-dir", str(tmp_path / "runs"),
                           "--keep-going", "--jobs", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "2 steps failed ('echo', 'other')" in done.stderr or "2 steps failed ('other', 'echo')" in done.stderr
    both = subprocess.run([str(BLOCKKIT), "run", str(wf), "--engine", "process", "--runs-dir", str(tmp_path / "runs"),
                           "--keep-going", "--fail-fast"], capture_output=True, text=True, timeout=60)
    assert both.returncode == 4 and "contradict" in both.stderr


@pytest.mark.slow
def test_two_runs_sharing_the_cache_at_once_keep_every_entry_valid(tmp_path: Path) -> None:
    inp = tmp_path / "input"
    write_input(inp, EIGHT)
    wf = workflow(tmp_path, inp)
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_"))}
    cmd = [str(BLOCKKIT), "run", str(wf), "--engine", "process", "--runs-dir", str(runs), "--jobs", "2", "--quiet"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    index = json.loads((runs / "cache-index.json").read_text())
    parts = {k: v for k, v in index.items() if "/parts/" in v}
    assert len(parts) == 8
    for key, rel in parts.items():  # every entry names a part whose run.json records that key
        run_json = json.loads((runs / rel.split("/")[0] / "run.json").read_text())
        assert key in [p["cache_key"] for p in run_json["steps"]["echo"]["parts"] if p["status"] in ("ran", "reused")]
    write_input(inp, [*EIGHT[:7], ("s7", "changed")])
    third = run(tmp_path, wf, jobs=2)
    assert features_run(third) == ["s7"]
    assert_same_as_full_run(tmp_path, wf, third)


@pytest.mark.slow
def test_removing_the_producing_run_moves_part_entries_to_a_run_that_holds_them(tmp_path: Path) -> None:
    from blockkit.runner._housekeeping import read_run_info, remove_runs

    inp = tmp_path / "input"
    write_input(inp, EIGHT[:3])
    wf = workflow(tmp_path, inp)
    first = run(tmp_path, wf, jobs=1)
    write_input(inp, [*EIGHT[:2], ("s2", "changed")])
    second = run(tmp_path, wf, jobs=1)
    runs = tmp_path / "runs"
    result = remove_runs(runs, [read_run_info(first)])
    assert result.moved >= 2
    index = json.loads((runs / "cache-index.json").read_text())
    assert all(not rel.startswith(first.name) for rel in index.values())
    write_input(inp, [*EIGHT[:2], ("s2", "changed again")])
    third = run(tmp_path, wf, jobs=1)
    assert features_run(third) == ["s2"]
    assert {p["from"].split("/")[0] for p in record(third)["parts"] if p["status"] == "reused"} == {second.name}
    assert second.exists()


@pytest.mark.slow
@pytest.mark.docker
def test_a_rerun_on_docker_executes_only_the_changed_feature(tmp_path: Path, docker_client, base_image) -> None:
    inp = tmp_path / "input"
    write_input(inp, EIGHT[:4])
    wf = workflow(tmp_path, inp)
    first = run(tmp_path, wf, engine="docker", jobs=2)
    assert sorted(features_run(first)) == ["s0", "s1", "s2", "s3"]
    write_input(inp, [*EIGHT[:3], ("s3", "changed on docker")])
    second = run(tmp_path, wf, engine="docker", jobs=2)
    assert features_run(second) == ["s3"]
    assert_same_as_full_run(tmp_path, wf, second, engine="docker")
    # The process engine keeps its own entries: the engines' results are not mixed.
    on_process = run(tmp_path, wf, engine="process", jobs=2)
    assert sorted(features_run(on_process)) == ["s0", "s1", "s2", "s3"]


@pytest.mark.slow
def test_the_incremental_example_reruns_only_the_added_scene(tmp_path: Path) -> None:
    if os.environ.get("CI", "").lower() not in {"1", "true", "yes"}:
        pytest.importorskip("rasterio")  # the example blocks need blockkit-eo; CI has it, so never skips there
    repo = Path(__file__).resolve().parents[2]
    example = (repo / "examples/workflows/incremental.yaml").read_text()
    seven = tmp_path / "incremental.yaml"
    seven.write_text(example.replace("examples/", f"{repo}/examples/"))
    eight = tmp_path / "incremental-8.yaml"
    eight.write_text(seven.read_text().replace("limit: 7", "limit: 8"))
    assert eight.read_text() != seven.read_text()
    first = run(tmp_path, seven, jobs=2)
    assert len(features_run(first, "ndvi")) == 7
    second = run(tmp_path, eight, jobs=2)
    assert len(features_run(second, "ndvi")) == 1
    assert record(second, "ndvi")["detail"].endswith(", 7 reused")
    full = run(tmp_path, eight, runs="full", jobs=2)
    assert tree(second / "steps/ndvi/output") == tree(full / "steps/ndvi/output")
    assert tree(second / "steps/ndvi/quicklooks") == tree(full / "steps/ndvi/quicklooks")


@pytest.mark.slow
def test_the_console_says_how_many_features_ran_and_were_reused(tmp_path: Path) -> None:
    inp = tmp_path / "input"
    write_input(inp, EIGHT[:3])
    wf = workflow(tmp_path, inp)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_"))}
    cmd = [str(BLOCKKIT), "run", str(wf), "--engine", "process", "--runs-dir", str(tmp_path / "runs"), "--quiet"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "(3 ran, 0 reused)" in first.stdout + first.stderr
    write_input(inp, [("s0", "new"), *EIGHT[1:3]])
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "(1 ran, 2 reused)" in second.stdout + second.stderr
