"""UP42-style blocks on the process engine with a block venv of another Python (3.9).

`up42-blockutils==1.2.4` (Requires-Python <3.10) cannot install on the Python running
blockkit (>= 3.10): the block's environment is made with the newest older interpreter on
this host that takes it, found automatically, or the one `BLOCKKIT_BLOCK_PYTHON` names.
Under CI=true nothing here skips: `.ci/python39-setup.sh` (run by scripts/test) checks that
a Python 3.9 exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blockkit.contract.errors import BlockkitError
from blockkit.runner._blockenv import COMPLETE_MARK, ensure_block_env, env_key, find_interpreters
from blockkit.runner._process_engine import ProcessEngine

from .conftest import EXAMPLES, in_ci

BLOCKKIT = Path(sys.executable).with_name("blockkit")


def _python39() -> str:
    found = [i for i in find_interpreters() if i.version == "3.9"]
    if not found:
        if in_ci():
            pytest.fail("CI=true but no Python 3.9 on this host (.ci/python39-setup.sh checks for one)")
        pytest.skip("no Python 3.9 on this host")
    return found[0].command


def _require_isolation() -> None:
    if not ProcessEngine().isolates_paths:
        if in_ci():
            pytest.fail("CI=true but the process engine cannot isolate steps (bubblewrap)")
        pytest.skip("the process engine cannot isolate the fixed UP42 paths here (bubblewrap)")


def _chain(tmp_path: Path, block: Path, extra: str = "") -> Path:
    wf = tmp_path / "chain.yaml"
    wf.write_text(
        "name: up42-py39\nsteps:\n"
        f"  scene: {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 64, limit: 1}}}}\n"
        f"  {block.name}: {{block: {block}{extra}}}\n"
    )
    return wf


def _run(wf: Path, tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BLOCKKIT), "run", str(wf), "-e", "process", "--runs-dir", str(tmp_path / "runs"), *args],
        capture_output=True, text=True, timeout=1800, env=env,
    )


@pytest.mark.slow
def test_blockutils_124_block_runs_on_python39_chosen_automatically(tmp_path: Path, up42_blocks) -> None:
    _python39()
    _require_isolation()
    block = up42_blocks["up42-blockutils"]
    env = {k: v for k, v in os.environ.items() if k != "BLOCKKIT_BLOCK_PYTHON"}
    env["BLOCKKIT_VENV_DIR"] = str(tmp_path / "venvs")
    host_output = Path("/tmp/output/data.json")
    before = host_output.stat().st_mtime_ns if host_output.exists() else None
    done = _run(_chain(tmp_path, block), tmp_path, env, "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    # The switch is said, naming the requirement and the interpreter.
    assert "block up42-blockutils: up42-blockutils 1.2.4 needs Python >=3.7, <3.10; using Python 3.9" in done.stderr
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file()]
    features = json.loads((run_dir / "steps/up42-blockutils/output/data.json").read_text())["features"]
    assert len(features) == 1 and features[0]["properties"]["stats:band"] == 1
    assert features[0]["properties"]["stats:mean"] > 0 and len(features[0]["bbox"]) == 4
    (venv,) = [p for p in (tmp_path / "venvs").iterdir() if (p / COMPLETE_MARK).is_file()]
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import sys, importlib.metadata as m; print('%d.%d' % sys.version_info[:2], m.version('up42-blockutils'), "
         "m.version('ciso8601'))"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )
    version, blockutils, ciso = probe.stdout.split()
    assert (version, blockutils, ciso) == ("3.9", "1.2.4", "2.2.0"), probe.stderr  # ciso8601 compiled for 3.9
    assert (host_output.stat().st_mtime_ns if host_output.exists() else None) == before


_HOSTILE = '''
import json, os, sys
results = {}
targets = {
    "venv": os.path.join(sys.prefix, "evil.txt"),
    "site": os.path.join(sys.prefix, "lib", "python%d.%d" % sys.version_info[:2], "site-packages", "evil.pth"),
    "interpreter": os.path.join(sys.base_prefix, "evil.txt"),
    "block": "/block/evil.txt",
}
for name, path in targets.items():
    try:
        with open(path, "w") as fh:
            fh.write("import os; os.system('echo pwned')\\n")
        results[name] = "written"
    except OSError as exc:
        results[name] = exc.strerror
home = os.path.dirname(sys.base_prefix)
results["siblings"] = sorted(os.listdir(home)) if os.path.isdir(home) else []
results["python_on_path"] = os.path.realpath(__import__("shutil").which("python") or "")
results["executable"] = os.path.realpath(sys.executable)
print("RESULTS " + json.dumps(results))
json.dump({"type": "FeatureCollection", "features": []}, open("/tmp/output/data.json", "w"))
'''


def _hostile_block(root: Path) -> Path:
    block = root / "venv-writer"
    (block / "src").mkdir(parents=True)
    (block / "UP42Manifest.json").write_text(json.dumps({
        "_up42_specification_version": 2, "name": "venv-writer", "type": "processing", "tags": ["test"],
        "display_name": "venv writer", "description": "Tries to change its own environment and /block.",
        "parameters": {}, "machine": {"type": "small"},
        "input_capabilities": {"raster": {"up42_standard": {"format": "GTiff"}}},
        "output_capabilities": {"raster": {"up42_standard": {"format": "GTiff"}}},
    }))
    (block / "requirements.txt").write_text("affine\n")
    (block / "Dockerfile").write_text('FROM python:3.9\nCOPY src /block/src\nCMD ["python", "/block/src/run.py"]\n')
    (block / "src" / "run.py").write_text(_HOSTILE)
    return block


@pytest.mark.slow
def test_block_cannot_write_its_venv_the_interpreter_nor_block(tmp_path: Path) -> None:
    python39 = _python39()
    _require_isolation()
    block = _hostile_block(tmp_path)
    env = {**os.environ, "BLOCKKIT_VENV_DIR": str(tmp_path / "venvs"), "BLOCKKIT_BLOCK_PYTHON": "3.9"}
    done = _run(_chain(tmp_path, block), tmp_path, env)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(l for l in (done.stdout + done.stderr).splitlines() if "RESULTS " in l)
    results = json.loads(line.split("RESULTS ", 1)[1])
    for name in ("venv", "site", "interpreter", "block"):
        assert results[name] == "Read-only file system", (name, results)
    # Of the interpreter's home (e.g. pyenv's versions) only that installation is visible (and
    # blockkit's own Python, bound for every step).
    mine = Path(os.path.realpath(python39)).parent.parent
    assert mine.name in results["siblings"]
    assert set(results["siblings"]) <= {mine.name, Path(sys.base_prefix).name}, results["siblings"]
    (venv,) = [p for p in (tmp_path / "venvs").iterdir() if (p / COMPLETE_MARK).is_file()]
    assert results["python_on_path"] == results["executable"] == os.path.realpath(venv / "bin" / "python")
    assert not list(venv.rglob("evil*")) and not (block / "evil.txt").exists()
    assert not (Path(os.path.realpath(python39)).parent.parent / "evil.txt").exists()


@pytest.mark.slow
def test_failing_requirement_is_one_line_exit_1_and_leaves_no_env(tmp_path: Path) -> None:
    _require_isolation()
    block = _hostile_block(tmp_path)
    (block / "requirements.txt").write_text("affine\nno-such-package-blockkit-test==1.0\n")
    env = {**os.environ, "BLOCKKIT_VENV_DIR": str(tmp_path / "venvs")}
    env.pop("BLOCKKIT_BLOCK_PYTHON", None)
    done = _run(_chain(tmp_path, block), tmp_path, env)
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [l for l in done.stderr.splitlines() if l.startswith("[")]
    assert len(errors) == 1 and errors[0].startswith("[UNEXPECTED_ERROR] installing the requirements of block venv-writer")
    assert "no-such-package-blockkit-test" in errors[0] and "Traceback" not in done.stderr
    assert not [p for p in (tmp_path / "venvs").iterdir() if p.is_dir()]
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/steps/scene/output/data.json"))


@pytest.mark.slow
def test_no_suitable_interpreter_is_refused_in_one_line(tmp_path: Path, monkeypatch) -> None:
    """Only the running Python is found (no pyenv, no python3.N on PATH but /usr/bin's)."""
    monkeypatch.setenv("BLOCKKIT_VENV_DIR", str(tmp_path / "venvs"))
    monkeypatch.delenv("BLOCKKIT_BLOCK_PYTHON", raising=False)
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("blockkit.runner._blockenv._candidate_paths", lambda: [])
    block = tmp_path / "block"
    block.mkdir()
    (block / "requirements.txt").write_text("up42-blockutils==1.2.4\n")
    with pytest.raises(BlockkitError) as info:
        ensure_block_env(block)
    line = info.value.headline()
    assert "\n" not in line and info.value.exit_code == 1
    assert "up42-blockutils 1.2.4 needs Python >=3.7, <3.10" in line and "no suitable interpreter" in line
    assert "BLOCKKIT_BLOCK_PYTHON" in line
    assert not [p for p in (tmp_path / "venvs").iterdir() if p.is_dir()]


def test_block_python_by_version_that_does_not_exist_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BLOCKKIT_BLOCK_PYTHON", "3.1")
    with pytest.raises(BlockkitError) as info:
        env_key(tmp_path)
    assert info.value.headline().startswith("[UNEXPECTED_ERROR] BLOCKKIT_BLOCK_PYTHON=3.1: no Python 3.1 on this host")
    monkeypatch.setenv("BLOCKKIT_BLOCK_PYTHON", "python-blockkit-missing")
    with pytest.raises(BlockkitError, match="no such command on PATH"):
        env_key(tmp_path)
    monkeypatch.setenv("BLOCKKIT_BLOCK_PYTHON", "/bin/false")  # not a Python
    with pytest.raises(BlockkitError) as info:
        env_key(tmp_path)
    assert info.value.headline().startswith("[UNEXPECTED_ERROR] the block interpreter /bin/false does not run")
    assert "\n" not in info.value.headline()


@pytest.mark.slow
def test_half_built_env_is_rebuilt_not_used(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BLOCKKIT_VENV_DIR", str(tmp_path / "venvs"))
    block = tmp_path / "block"
    block.mkdir()
    (block / "requirements.txt").write_text("affine\n")
    # A build killed after the venv existed but before its requirements were in.
    half = tmp_path / "venvs" / env_key(block)
    (half / "bin").mkdir(parents=True)
    (half / "bin" / "python").write_text("#!/bin/sh\nexit 1\n")
    made = ensure_block_env(block)
    assert made.created and (made.path / COMPLETE_MARK).is_file()
    done = subprocess.run([str(made.python), "-c", "import affine"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_json_run_reports_warnings_as_events(tmp_path: Path) -> None:
    """`blockkit run --json`: warnings (a capped machine type) are JSON events on stderr, not lost."""
    wf = tmp_path / "scene.yaml"
    wf.write_text(f"name: json-warn\nsteps:\n  scene: {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 32}}}}\n")
    done = subprocess.run(
        [str(BLOCKKIT), "run", str(wf), "-e", "process", "--json", "--max-cpus", "0.25",
         "--runs-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(l) for l in done.stderr.splitlines() if l.startswith("{")]
    warnings = [e for e in events if e["event"] == "warning"]
    assert warnings and "capped to 0.25 CPUs" in warnings[0]["message"], done.stderr
    assert not [l for l in done.stderr.splitlines() if l.strip() and not l.startswith("{")]
    assert json.loads(done.stdout)["status"] == "ok"


@pytest.mark.slow
def test_requirement_build_scripts_do_not_see_the_runners_secrets(tmp_path: Path, monkeypatch) -> None:
    """A requirement built from source runs its setup.py on the host: not with blockkit's secrets."""
    monkeypatch.setenv("BLOCKKIT_VENV_DIR", str(tmp_path / "venvs"))
    monkeypatch.delenv("BLOCKKIT_BLOCK_PYTHON", raising=False)
    monkeypatch.setenv("BLOCKKIT_KEYSTORE_PASSPHRASE", "passphrase-must-not-leak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-must-not-leak")
    dump = tmp_path / "seen-env.json"
    package = tmp_path / "snoop"
    package.mkdir()
    (package / "snoop.py").write_text("")
    (package / "setup.py").write_text(
        "import json, os\nfrom setuptools import setup\n"
        f"json.dump(dict(os.environ), open({str(dump)!r}, 'w'))\n"
        "setup(name='snoop', version='1.0', py_modules=['snoop'])\n"
    )
    block = tmp_path / "block"
    block.mkdir()
    (block / "requirements.txt").write_text(f"{package}\n")
    made = ensure_block_env(block, wheelhouse=tmp_path / "wheels")
    seen = json.loads(dump.read_text())
    assert "BLOCKKIT_KEYSTORE_PASSPHRASE" not in seen and "AWS_SECRET_ACCESS_KEY" not in seen
    assert "passphrase-must-not-leak" not in dump.read_text() and "aws-secret-must-not-leak" not in dump.read_text()
    done = subprocess.run([str(made.python), "-c", "import snoop"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_interpreter_asked_for_is_kept_and_the_failure_says_why(tmp_path: Path, monkeypatch) -> None:
    """BLOCKKIT_BLOCK_PYTHON is used as is (no automatic switch); a failure names the Python limit."""
    monkeypatch.setenv("BLOCKKIT_VENV_DIR", str(tmp_path / "venvs"))
    monkeypatch.setenv("BLOCKKIT_BLOCK_PYTHON", sys.executable)  # blockkit's own (>= 3.10)
    block = tmp_path / "block"
    block.mkdir()
    (block / "requirements.txt").write_text("up42-blockutils==1.2.4\n")
    with pytest.raises(BlockkitError) as info:
        ensure_block_env(block, wheelhouse=tmp_path / "wheels")
    line = info.value.headline()
    assert line.startswith("[UNEXPECTED_ERROR] installing the requirements of block block (Python 3.1")
    assert "No matching distribution found for up42-blockutils==1.2.4" in line
    assert line.endswith("(up42-blockutils 1.2.4 needs Python >=3.7, <3.10)") and "\n" not in line
