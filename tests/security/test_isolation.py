"""Per-step isolation: UP42 fixed paths work, nothing outside the step's output can be changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from blockkit.runner._isolation import bwrap_problem, host_environment
from blockkit.runner._process_engine import ProcessEngine
from blockkit.runner._run import RunFailed
from blockkit.runner._session import RunRequest, run_request

from .engine_blocks import CLI_CODE, files_under, workflow, write_hostile

CI = os.environ.get("CI") == "true"


@pytest.fixture
def bwrap() -> None:
    """Bubblewrap must work here (never skipped under CI=true: CI installs it)."""
    problem = bwrap_problem()
    if problem is not None:
        if CI:
            pytest.fail(f"CI=true but {problem}")
        pytest.skip(problem)


@pytest.fixture
def host_tmp_decoy(tmp_path: Path):
    """A host /tmp/input with a stale scene, as a leftover of another tool would leave (restored after)."""
    decoy = Path("/tmp/input")
    if decoy.exists() or decoy.is_symlink():
        yield None  # someone else's: leave it alone, the test still checks what the block read
        return
    decoy.mkdir()
    (decoy / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "stale", "geometry": None, "properties": {"up42.data_path": "stale.txt"}}]}))
    (decoy / "stale.txt").write_text("stale scene\n")
    try:
        yield decoy
    finally:
        for path in decoy.iterdir():
            path.unlink()
        decoy.rmdir()


def _run(wf: Path, runs: Path, engine: str = "process", **kw) -> dict:
    return run_request(RunRequest(target=wf, engine=engine, runs_dir=runs, use_cache=False, **kw))


def test_a_block_with_fixed_up42_paths_reads_its_own_input_not_the_host_tmp(
    tmp_path: Path, bwrap: None, host_tmp_decoy: Path | None
) -> None:
    block = write_hostile(tmp_path / "blocks")
    summary = _run(workflow(tmp_path, block, {"action": "fixed-paths"}), tmp_path / "runs")
    out = Path(summary["steps"]["evil"]["output_dir"])
    data = json.loads((out / "data.json").read_text())
    assert [f["id"] for f in data["features"]] == ["u0"]
    assert (out / "seen-0.txt").read_text() == "HELLO\n"  # the upstream step's a.txt, not the stale scene
    assert data["cwd"] == "/block" and data["block"] == ["UP42Manifest.json", "src"]
    assert (Path(summary["run_dir"]) / "steps/evil/quicklooks/ql.txt").read_text() == "quicklook"
    assert not Path("/tmp/output/data.json").exists() or host_tmp_decoy is None


def test_a_hostile_block_changes_nothing_outside_its_output(tmp_path: Path, bwrap: None) -> None:
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victim = victim_dir / "precious.txt"
    victim.write_text("untouched\n")
    block = write_hostile(tmp_path / "blocks")
    runs = tmp_path / "runs"
    earlier = _run(workflow(tmp_path, block, {"action": "ok"}), runs)  # an earlier, finished run
    earlier_files = {p: p.read_bytes() for p in files_under(Path(earlier["run_dir"]) / "steps")}
    params = {"action": "attack", "victims": [str(victim), str(victim_dir / "new.txt"),
                                             earlier["steps"]["src"]["output_dir"] + "/a.txt"],
              "look": [str(tmp_path), str(Path.home()), "/work", "/root"]}
    summary = _run(workflow(tmp_path, block, params), runs)
    tried = json.loads((Path(summary["steps"]["evil"]["output_dir"]) / "data.json").read_text())["tried"]
    assert victim.read_text() == "untouched\n" and sorted(os.listdir(victim_dir)) == ["precious.txt"]
    assert {p: p.read_bytes() for p in files_under(Path(earlier["run_dir"]) / "steps")} == earlier_files
    src_out = Path(summary["steps"]["src"]["output_dir"])
    assert (src_out / "a.txt").read_text() == "hello\n" and not (src_out / "planted.txt").exists()
    assert not (block / "planted.txt").exists()
    for target in (str(victim), "/tmp/input/a.txt", "/block/planted.txt", "/etc/planted", "/usr/planted"):
        assert tried[target] != "written", (target, tried[target])
    # No capabilities (a runner started as root included): the read-only binds cannot be remounted.
    assert tried["CapEff"] == ["0000000000000000"] and tried["NoNewPrivs"] == ["1"]
    # The host's folders are not even visible: only the system, Python and the step's own folders.
    assert tried["ls " + str(tmp_path)] == "absent"
    assert tried["ls /root"] in ("absent", [".pyenv"]) or tried["ls /root"] == []
    # A private /tmp and HOME work (scratch, caches), and vanish with the step.
    assert tried["/tmp/scratch.txt"] == "written" and not Path("/tmp/scratch.txt").exists()
    assert tried["/tmp/.cache-probe"] == "written"


def test_a_step_without_network_in_its_manifest_has_no_network(tmp_path: Path, bwrap: None) -> None:
    block = write_hostile(tmp_path / "blocks")
    (block / "src" / "run.py").write_text(
        "import json, os, socket\n"
        "s = socket.socket()\n"
        "try:\n"
        "    s.connect(('127.0.0.1', 9)); r = 'connected'\n"
        "except OSError as e:\n"
        "    r = e.strerror\n"
        "json.dump({'type': 'FeatureCollection', 'features': [], 'net': r, 'ifs': os.listdir('/sys/class/net')},"
        " open('/tmp/output/data.json', 'w'))\n"
    )
    summary = _run(workflow(tmp_path, block, {}, source=False), tmp_path / "runs")
    data = json.loads((Path(summary["steps"]["evil"]["output_dir"]) / "data.json").read_text())
    assert data["net"] in ("Network is unreachable", "Connection refused")
    with_net = write_hostile(tmp_path / "netblock", options={"network": True})
    (with_net / "src" / "run.py").write_text((block / "src" / "run.py").read_text())
    summary = _run(workflow(tmp_path, with_net, {}, source=False), tmp_path / "runs2")
    data = json.loads((Path(summary["steps"]["evil"]["output_dir"]) / "data.json").read_text())
    assert data["net"] == "Connection refused"  # the host's loopback: nothing listens on port 9


def test_the_step_environment_is_an_allow_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOCKKIT_KEYSTORE_PASSPHRASE", "correct horse battery")
    monkeypatch.setenv("UNRELATED_SECRET", "do-not-pass")
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")
    env = host_environment(network=False)
    assert "BLOCKKIT_KEYSTORE_PASSPHRASE" not in env and "UNRELATED_SECRET" not in env and "https_proxy" not in env
    assert host_environment(network=True)["https_proxy"] == "http://proxy.invalid:3128"
    block = write_hostile(tmp_path / "blocks")
    summary = _run(workflow(tmp_path, block, {"action": "print-secrets"}, source=False), tmp_path / "runs")
    names = json.loads((Path(summary["steps"]["evil"]["output_dir"]) / "data.json").read_text())["env"]
    assert "BLOCKKIT_KEYSTORE_PASSPHRASE" not in names and "UNRELATED_SECRET" not in names
    assert {"BLOCKKIT_INPUT_DIR", "BLOCKKIT_OUTPUT_DIR", "UP42_TASK_PARAMETERS", "HOME", "TMPDIR", "PATH"} <= set(names)


def test_without_bubblewrap_the_engine_says_so_and_runs_unisolated(tmp_path: Path) -> None:
    engine = ProcessEngine(isolate=False)
    assert engine.isolates_paths is False and "NOT isolated" not in engine.isolation_note
    from blockkit.runner import _isolation as isolation

    isolation.bwrap_problem.cache_clear()
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = str(tmp_path)  # no bwrap on PATH
    try:
        fallback = ProcessEngine()
        assert fallback.isolates_paths is False
        assert "NOT isolated" in fallback.isolation_note and "bubblewrap" in fallback.isolation_note
    finally:
        os.environ["PATH"] = old
        isolation.bwrap_problem.cache_clear()
    # Unisolated, a blockkit-style block (BLOCKKIT_* folders) still runs.
    block = write_hostile(tmp_path / "blocks")
    (block / "src" / "run.py").write_text(
        "import json, os\n"
        "json.dump({'type': 'FeatureCollection', 'features': [], 'home': os.environ['HOME']},"
        " open(os.path.join(os.environ['BLOCKKIT_OUTPUT_DIR'], 'data.json'), 'w'))\n"
    )
    from blockkit.runner._engine import StepSpec

    spec = StepSpec(name="s", block_dir=block, image=None, input_dir=tmp_path / "in", output_dir=tmp_path / "out",
                    quicklook_dir=tmp_path / "ql", log_path=tmp_path / "s.log")
    (tmp_path / "in").mkdir()
    result = engine.run_step(spec)
    assert result.exit_code == 0
    home = json.loads((tmp_path / "out" / "data.json").read_text())["home"]
    assert home.startswith("/tmp/blockkit-") and not Path(home).exists()  # private scratch, removed after


def test_fixed_path_blocks_fail_with_one_line_where_the_host_tmp_is_seen(tmp_path: Path) -> None:
    """Unisolated, a fixed-path block reads the host /tmp: the run must not report a stale result as ok."""
    engine = ProcessEngine(isolate=False)
    block = write_hostile(tmp_path / "blocks")
    from blockkit.runner._engine import StepSpec

    (tmp_path / "in").mkdir()
    spec = StepSpec(name="s", block_dir=block, image=None, input_dir=tmp_path / "in", output_dir=tmp_path / "out",
                    quicklook_dir=tmp_path / "ql", log_path=tmp_path / "s.log", params={"action": "error"})
    result = engine.run_step(spec)
    assert result.exit_code == 4


def test_a_gateway_step_keeps_the_host_loopback(tmp_path: Path, bwrap: None) -> None:
    from blockkit.runner._process_engine import uses_loopback_service

    assert uses_loopback_service({"AWS_ENDPOINT_URL": "http://127.0.0.1:41234"})
    assert not uses_loopback_service({"BLOCKKIT_KEY_X_ENDPOINT": "https://s3.example.org"})


def test_an_engine_that_cannot_start_the_program_fails_the_step_with_one_line(tmp_path: Path, bwrap: None) -> None:
    block = write_hostile(tmp_path / "blocks", options={"command": ["/block/src/missing.sh"]})
    with pytest.raises(RunFailed) as info:
        _run(workflow(tmp_path, block, {}, source=False), tmp_path / "runs")
    assert "cannot start '/block/src/missing.sh'" in info.value.message and "\n" not in info.value.message


def test_a_runner_whose_python_lives_under_tmp_runs_isolated_steps_and_shows_nothing_else_of_tmp(
    tmp_path: Path, bwrap: None
) -> None:
    # A clone or venv in /tmp (a new user's `git clone . /tmp/x`): the step's private /tmp must
    # not hide the runner's own Python, and must show nothing else of the host's /tmp.
    import subprocess
    import sys
    import sysconfig

    assert str(tmp_path).startswith("/tmp/"), tmp_path
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    import shutil

    source_root = tmp_path / "src"  # blockkit's own code under /tmp, as in such a clone
    shutil.copytree(Path(__file__).resolve().parents[2] / "blockkit", source_root / "blockkit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (next(venv.glob("lib/python3*/site-packages")) / "blockkit-here.pth").write_text(
        f"{source_root}\n{sysconfig.get_paths()['purelib']}\n")
    (tmp_path / "secret.txt").write_text("not for blocks\n")
    block = write_hostile(tmp_path / "blocks")
    wf = workflow(tmp_path, block, {"action": "attack", "look": [str(tmp_path)],
                                    "victims": [str(venv / "pyvenv.cfg")]})
    scene = Path(__file__).resolve().parents[2] / "examples" / "blocks" / "synthetic-scene"  # imports blockkit
    wf.write_text(wf.read_text() + f"  scene: {{block: {json.dumps(str(scene))}, params: {{size: 64}}, after: []}}\n")
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", CLI_CODE, "run", str(wf), "-e", "process", "--no-cache",
         "--runs-dir", str(tmp_path / "runs"), "--json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["steps"]["scene"]["status"] == "ok"
    tried = json.loads((Path(summary["steps"]["evil"]["output_dir"]) / "data.json").read_text())["tried"]
    assert tried["ls " + str(tmp_path)] == ["src", "venv"]  # not secret.txt, blocks/ or runs/
    assert tried[str(venv / "pyvenv.cfg")] == "Read-only file system"
    assert (venv / "pyvenv.cfg").read_text().count("owned") == 0
