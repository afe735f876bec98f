"""A third engine in one small module: the Engine base class and the registry are all the runner needs."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from blockkit.contract.errors import WorkflowError
from blockkit.runner._engine import Engine, LogSink, StepResult, StepSpec, register_engine, registered_engines
from blockkit.runner._engines import select_engine
from blockkit.runner._run import RunFailed
from blockkit.runner._session import RunRequest, run_request

from .blocks import make_blocks

Step = Callable[[StepSpec], int]


def _make(spec: StepSpec) -> int:
    features = []
    for i in range(int(spec.params.get("count", 2))):
        (spec.output_dir / f"item{i}.txt").write_text(f"hello {i}\n")
        features.append({"type": "Feature", "id": f"item{i}", "geometry": None,
                         "properties": {"up42.data_path": f"item{i}.txt"}})
    (spec.output_dir / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return 0


def _upper(spec: StepSpec) -> int:
    if spec.params.get("behaviour") == "exit":
        return int(spec.params.get("code", 1))
    fc = json.loads((spec.input_dir / "data.json").read_text())
    for feature in fc["features"]:
        rel = feature["properties"]["up42.data_path"]
        out = rel.replace("/", "_") + ".upper"
        (spec.output_dir / out).write_text((spec.input_dir / rel).read_text().upper())
        feature["properties"]["up42.data_path"] = out
    (spec.output_dir / "data.json").write_text(json.dumps(fc))
    return 0


class InlineEngine(Engine):
    """Runs each step as a Python function in this process, chosen by the block's name."""

    name = "inline"

    @property
    def isolation_note(self) -> str:
        return "steps run in the runner's own process (test engine)"
    functions: dict[str, Step] = {"source": _make, "upper": _upper}
    calls: list[str] = []
    lock = threading.Lock()

    def run_step(self, spec: StepSpec, on_log_line: LogSink | None = None) -> StepResult:
        assert spec.block_dir is not None
        started = time.time()
        spec.output_dir.mkdir(parents=True, exist_ok=True)
        with self.lock:
            self.calls.append(spec.name)
        code = self.functions[spec.block_dir.name](spec)
        with spec.log_path.open("a") as log:
            log.write(f"inline {spec.name} exit {code}\n")
        if on_log_line is not None:
            on_log_line(spec.name, f"inline exit {code}")
        return StepResult(code, started, time.time())


@pytest.fixture(autouse=True)
def inline_registered():
    register_engine("inline", lambda: (InlineEngine(), "inline engine (asked for)"))
    InlineEngine.calls.clear()
    yield
    from blockkit.runner import _engine as engine_module

    engine_module._REGISTRY.pop("inline", None)


def test_the_registry_selects_a_registered_engine_and_refuses_unknown_ones() -> None:
    engine, why = select_engine("inline")
    assert isinstance(engine, InlineEngine) and why.startswith("inline engine (asked for); steps run in")
    assert {"auto", "process", "docker", "inline"} <= set(registered_engines())
    with pytest.raises(WorkflowError, match="unknown engine 'nope'; choose one of auto, process, docker, inline"):
        select_engine("nope")


def test_an_engine_must_implement_run_step() -> None:
    class Incomplete(Engine):
        name = "incomplete"

    with pytest.raises(TypeError):
        Incomplete()  # type: ignore[abstract]


def test_a_fake_engine_runs_through_plan_run_provenance_cache_and_resume(tmp_path: Path) -> None:
    blocks = make_blocks(tmp_path / "blocks")
    wf = tmp_path / "wf.yaml"
    wf.write_text("name: inline\nsteps:\n"
                  f"  make: {{block: {blocks['source']}, params: {{count: 3}}}}\n"
                  f"  a: {{block: {blocks['upper']}, params: {{behaviour: exit, code: 3}}}}\n"
                  f"  b: {{block: {blocks['upper']}, after: [make]}}\n"
                  f"  both: {{block: {blocks['upper']}, after: [a, b]}}\n")
    runs = tmp_path / "runs"
    with pytest.raises(RunFailed) as caught:
        run_request(RunRequest(target=wf, engine="inline", runs_dir=runs, jobs=2))
    assert caught.value.step == "a" and caught.value.step_exit == 3
    wf.write_text(wf.read_text().replace("{behaviour: exit, code: 3}", "{behaviour: ok}"))
    InlineEngine.calls.clear()
    resumed = run_request(RunRequest(target=wf, engine="inline", runs_dir=runs, resume=caught.value.run_dir.name))
    # make and b were done: skipped; a (now the same block, parameters and input as b) reused b's result.
    assert InlineEngine.calls == ["both"]
    assert {n: s["status"] for n, s in resumed["steps"].items()} == {"make": "ok", "a": "cached", "b": "ok", "both": "ok"}
    run_dir = Path(resumed["run_dir"])
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["engine"] == "inline" and prov["status"] == "ok"
    assert all(step["engine"] == "inline" for step in prov["steps"])
    both = run_dir / "steps" / "both" / "output"
    merged = json.loads((both / "data.json").read_text())
    # Fan-in on an engine that does not mount upstreams: the runner linked them under the input.
    assert sorted(f["properties"]["up42.data_path"] for f in merged["features"]) == sorted(
        f"{up}_item{i}.txt.upper.upper" for up in ("a", "b") for i in range(3))
    # The fan-in input was the upstream outputs linked under <input>/<step>/ by the runner.
    assert (both / "a_item0.txt.upper.upper").read_text() == "HELLO 0\n"
    InlineEngine.calls.clear()
    again = run_request(RunRequest(target=wf, engine="inline", runs_dir=runs))
    assert InlineEngine.calls == []  # every step served from the cache
    assert {s["status"] for s in again["steps"].values()} == {"cached"}


def _spec_with_cancel(tmp_path: Path, cancel: threading.Event) -> StepSpec:
    spec = StepSpec(name="w", block_dir=None, image=None, input_dir=tmp_path, output_dir=tmp_path / "o",
                    quicklook_dir=tmp_path / "q", log_path=tmp_path / "log")
    spec.cancel = cancel
    return spec


def test_watch_cancel_kills_once_while_the_block_runs(tmp_path: Path) -> None:
    cancel = threading.Event()
    kills: list[int] = []
    with Engine.watch_cancel(_spec_with_cancel(tmp_path, cancel), lambda: kills.append(1)):
        cancel.set()
        deadline = time.monotonic() + 10
        while not kills and time.monotonic() < deadline:
            time.sleep(0.01)
    assert kills == [1]


def test_watch_cancel_never_kills_after_the_block_is_over(tmp_path: Path) -> None:
    """Leaving does not wait for the watcher's poll, yet a stop asked afterwards kills nothing
    (the process group or container may be another's by then)."""
    for _ in range(20):
        cancel = threading.Event()
        kills: list[int] = []
        before = {t.ident for t in threading.enumerate()}
        with Engine.watch_cancel(_spec_with_cancel(tmp_path, cancel), lambda: kills.append(1)):
            pass
        cancel.set()  # the runner is stopped just after the step ended
        watchers = [t for t in threading.enumerate() if t.name == "cancel-w" and t.ident not in before]
        for watcher in watchers:
            watcher.join(timeout=5)
        assert kills == []


PLUGIN = '''
import json, os, subprocess, sys, time
from blockkit.runner import Engine, StepResult


class PluggedEngine(Engine):
    name = "plugged"
    isolation_note = "steps are plain child processes (a plugin engine)"

    def run_step(self, spec, on_log_line=None):
        started = time.time()
        env = {**os.environ, **spec.env, "BLOCKKIT_INPUT_DIR": str(spec.input_dir),
               "BLOCKKIT_OUTPUT_DIR": str(spec.output_dir), "BLOCKKIT_QUICKLOOK_DIR": str(spec.quicklook_dir),
               "UP42_TASK_PARAMETERS": json.dumps(spec.params)}
        with open(spec.log_path, "a") as log:
            code = subprocess.call([sys.executable, str(spec.block_dir / "src" / "run.py")], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, cwd=spec.block_dir)
        return StepResult(code, started, time.time())


def factory():
    return PluggedEngine(), "plugged engine (from its package's entry point)"

'''


def test_an_installed_package_provides_an_engine_through_its_entry_point(tmp_path: Path) -> None:
    """`blockkit run --engine NAME` finds an engine a package declares (`blockkit.engines`), with no import of it."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    (site / "plugged_engine-1.0.dist-info").mkdir(parents=True)
    (site / "plugged_engine.py").write_text(PLUGIN)
    (site / "plugged_engine-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: plugged-engine\nVersion: 1.0\n")
    (site / "plugged_engine-1.0.dist-info" / "entry_points.txt").write_text(
        "[blockkit.engines]\nplugged = plugged_engine:factory\nwrong = plugged_engine:missing\n")
    blocks = make_blocks(tmp_path / "blocks")
    env = {**os.environ, "PYTHONPATH": str(site)}
    exe = str(Path(sys.executable).with_name("blockkit"))

    def run(engine: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, "run", str(blocks["source"]), "--engine", engine, "--runs-dir", str(tmp_path / "runs"),
                               "--output", str(tmp_path / f"out-{engine}")], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)

    done = run("plugged")
    assert done.returncode == 0, done.stderr
    assert "engine: plugged engine (from its package's entry point)" in done.stderr
    assert json.loads((tmp_path / "out-plugged" / "data.json").read_text())["features"]
    [run_json] = (tmp_path / "runs").glob("*/run.json")
    assert json.loads(run_json.read_text())["engine"] == "plugged"
    unknown = run("nosuch")
    assert unknown.returncode == 4 and "unknown engine 'nosuch'; choose one of auto, process, docker, plugged, wrong" in unknown.stderr
    wrong = run("wrong")
    assert wrong.returncode == 4 and "engine 'wrong' (plugged_engine:missing, entry point of plugged-engine) cannot be loaded: AttributeError" in wrong.stderr
    assert "Traceback" not in unknown.stderr + wrong.stderr
