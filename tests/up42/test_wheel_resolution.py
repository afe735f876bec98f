"""How `blockkit build` resolves a block's requirements for an image's Python (here 3.9).

A local package index (PEP 503 pages with `data-requires-python`, served on 127.0.0.1) holds
project-made packages that reproduce what UP42 blocks meet on the real index:

- `bkt-capped` 2.0 is the newest release and needs Python `<3.10` (as `up42-blockutils` 1.2.4)
  and pins an old `bkt-sibling==1.0` and `bkt-sdistonly==1.0`, of which only an sdist exists
  (as `area==1.1.1`). Left to itself pip (wheels only, for another Python) backtracks to
  `bkt-capped` 1.0 (as it went back to blockutils 0.0.3); the release needing the older Python
  is pinned, as on the process engine (`_blockenv`), and the sdist is built into a wheel.
- `bkt-fresh` 1.0 lies in the wheelhouse (a stale wheel of an earlier build), 2.0 is on the index:
  an unpinned requirement gets 2.0, not what the wheelhouse happens to hold.
- With the index unreachable the wheelhouse is used, and the warning says so.
- An unchanged resolution is on record: the next image lookup runs no pip.
- A UP42-style block (own Dockerfile, no blockkit) built on the Python 3.9 base gets
  `bkt-capped` 2.0 in its image (Docker).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import zipfile
from pathlib import Path

import pytest

from blockkit.runner._wheelhouse import PythonTarget, WheelServer, python_capped_pins, resolve_wheels

pytestmark = pytest.mark.slow  # pip runs against a local index

TARGET = PythonTarget(python="3.9", machine="x86_64", glibc="2.31")

# (name, version, requires-python, requires-dist)
RELEASES = [
    ("bkt-capped", "1.0", ">=3.7", []),
    ("bkt-capped", "2.0", ">=3.7, <3.10", ["bkt-sibling==1.0", "bkt-sdistonly==1.0"]),
    ("bkt-sdistonly", "2.0", ">=3.7", []),
    ("bkt-sibling", "1.0", ">=3.7", []),
    ("bkt-sibling", "2.0", ">=3.7", []),
    ("bkt-fresh", "1.0", ">=3.7", []),
    ("bkt-fresh", "2.0", ">=3.7", []),
]


def _wheel(folder: Path, name: str, version: str, requires_python: str, requires: list[str]) -> Path:
    module = name.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\nRequires-Python: {requires_python}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: blockkit-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


# An in-tree PEP 517 backend: the sdist builds without fetching setuptools.
_BACKEND = """
import base64, hashlib, os, zipfile
NAME, VERSION = "bkt_sdistonly", "1.0"
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    dist = NAME + "-" + VERSION + ".dist-info"
    files = {NAME + "/__init__.py": "VERSION = '1.0'\\n",
             dist + "/METADATA": "Metadata-Version: 2.1\\nName: bkt-sdistonly\\nVersion: 1.0\\n",
             dist + "/WHEEL": "Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
    record = [p + ",sha256=" + base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b"=").decode()
              + "," + str(len(t.encode())) for p, t in files.items()]
    files[dist + "/RECORD"] = "\\n".join(record + [dist + "/RECORD,,"]) + "\\n"
    name = NAME + "-" + VERSION + "-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return name
"""


def _sdist(folder: Path) -> Path:
    import io
    import tarfile

    files = {
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        "backend.py": _BACKEND,
        "PKG-INFO": "Metadata-Version: 2.1\nName: bkt-sdistonly\nVersion: 1.0\n",
    }
    sdist = folder / "bkt_sdistonly-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"bkt_sdistonly-1.0/{path}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return sdist


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A PEP 503 index of RELEASES on 127.0.0.1; pip sees it alone (no config files)."""
    root = tmp_path / "index"
    (root / "files").mkdir(parents=True)
    pages: dict[str, list[str]] = {}
    for name, version, requires_python, requires in RELEASES:
        wheel = _wheel(root / "files", name, version, requires_python, requires)
        pages.setdefault(name, []).append(
            f'<a href="../../files/{wheel.name}" data-requires-python="{html.escape(requires_python)}">{wheel.name}</a><br>'
        )
    sdist = _sdist(root / "files")
    pages["bkt-sdistonly"].append(f'<a href="../../files/{sdist.name}">{sdist.name}</a><br>')
    for name, links in pages.items():
        (root / "simple" / name).mkdir(parents=True)
        (root / "simple" / name / "index.html").write_text("<html><body>" + "".join(links) + "</body></html>")
    with WheelServer(root) as url:
        monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
        monkeypatch.setenv("PIP_INDEX_URL", url + "simple/")
        monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
        monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
        monkeypatch.delenv("PIP_NO_INDEX", raising=False)
        yield root


def _resolve(tmp_path: Path, requirements: str, wheelhouse: Path) -> tuple[set[str], list[str]]:
    req = tmp_path / "requirements.txt"
    req.write_text(requirements)
    subset = tmp_path / "subset"
    warnings = resolve_wheels(["-r", str(req)], subset, wheelhouse, TARGET, requirements=req)
    return {w.name for w in subset.glob("*.whl")}, warnings


def test_release_needing_older_python_is_pinned_not_backtracked(tmp_path: Path, index: Path) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    got, _ = _resolve(tmp_path, "bkt-sibling\nbkt-capped\n", wheelhouse)
    # pip alone backtracks to bkt-capped 1.0 (it conflicts less with the unpinned sibling).
    assert "bkt_capped-2.0-py3-none-any.whl" in got, got
    assert "bkt_sibling-1.0-py3-none-any.whl" in got, got
    assert "bkt_sdistonly-1.0-py3-none-any.whl" in got, got


def test_stale_wheelhouse_release_loses_to_the_index(tmp_path: Path, index: Path) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    _wheel(wheelhouse, "bkt-fresh", "1.0", ">=3.7", [])
    got, warnings = _resolve(tmp_path, "bkt-fresh\n", wheelhouse)
    assert got == {"bkt_fresh-2.0-py3-none-any.whl"}, got
    assert not any("could not be reached" in w for w in warnings), warnings


def test_offline_uses_the_wheelhouse_and_says_so(tmp_path: Path, index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    _wheel(wheelhouse, "bkt-fresh", "1.0", ">=3.7", [])
    # A port nothing listens on: the index is unreachable.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple/")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    got, warnings = _resolve(tmp_path, "bkt-fresh\n", wheelhouse)
    assert got == {"bkt_fresh-1.0-py3-none-any.whl"}, got
    assert any("package index could not be reached" in w and "wheelhouse" in w for w in warnings), warnings


def test_pins_only_releases_capping_python(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("bkt-capped\nbkt-fresh\nbkt-other<2  # comment\n")
    output = "\n".join([
        "  Found link http://x/files/bkt_capped-2.0-py3-none-any.whl (from http://x/simple/bkt-capped/) "
        "(requires-python:>=3.7, <3.10), version: 2.0",
        "  Found link http://x/files/bkt_capped-3.0-py3-none-any.whl (from http://x/simple/bkt-capped/) "
        "(requires-python:>=3.7, <3.9), version: 3.0",
        "  Found link http://x/files/bkt_capped-4.0rc1-py3-none-any.whl (from http://x/simple/bkt-capped/) "
        "(requires-python:>=3.7, <3.10), version: 4.0rc1",
        "  Found link file:///w/bkt_fresh-2.0-py3-none-any.whl, version: 2.0",
        "  Found link http://x/files/bkt_other-1.5-py3-none-any.whl (from http://x/simple/bkt-other/) "
        "(requires-python:<3.11), version: 1.5",
        "  Found link http://x/files/bkt_other-2.5-py3-none-any.whl (from http://x/simple/bkt-other/) "
        "(requires-python:<3.11), version: 2.5",
    ])
    # 3.0 does not take 3.9, 4.0rc1 is a prerelease, bkt-fresh caps nothing, bkt-other<2 allows 1.5.
    assert python_capped_pins(output, req, "3.9") == {"bkt-capped": "2.0", "bkt-other": "1.5"}
    assert python_capped_pins(output, req, "3.11") == {}


def test_unchanged_resolution_runs_no_pip_and_a_change_resolves_again(
    tmp_path: Path, index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blockkit.runner import _wheelhouse

    calls: list[list[str]] = []
    real = _wheelhouse.run_pip

    def counting(args: list[str], what: str, env: dict[str, str] | None = None) -> str:
        calls.append(args)
        return real(args, what, env)

    monkeypatch.setattr(_wheelhouse, "run_pip", counting)
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    req = tmp_path / "requirements.txt"

    def resolve(text: str, name: str) -> tuple[set[str], list[str]]:
        req.write_text(text)
        subset = tmp_path / name
        pins = tmp_path / f"{name}.constraints"
        warnings = _wheelhouse.cached_resolution(
            ["own", text], subset, wheelhouse, TARGET,
            lambda: resolve_wheels(["-r", str(req)], subset, wheelhouse, TARGET, requirements=req, constraints=pins),
            constraints=pins,
        )
        return {w.name for w in subset.glob("*.whl")}, warnings

    first, _ = resolve("bkt-sibling\nbkt-capped\n", "one")
    assert calls and "bkt_capped-2.0-py3-none-any.whl" in first
    calls.clear()
    second, _ = resolve("bkt-sibling\nbkt-capped\n", "two")
    assert calls == [] and second == first
    # The release capping Python and what the host chose for the other requirement: the image's pip keeps both.
    assert (tmp_path / "two.constraints").read_text() == "bkt-capped==2.0\nbkt-sibling==1.0\n"
    # A changed requirement resolves again.
    third, _ = resolve("bkt-sibling\nbkt-capped\nbkt-fresh\n", "three")
    assert calls and third == first | {"bkt_fresh-2.0-py3-none-any.whl"}
    # A wheel removed from the wheelhouse: the record no longer applies.
    calls.clear()
    (wheelhouse / "bkt_fresh-2.0-py3-none-any.whl").unlink()
    fourth, _ = resolve("bkt-sibling\nbkt-capped\nbkt-fresh\n", "four")
    assert calls and fourth == third


@pytest.mark.docker
def test_up42_style_block_image_gets_the_release_for_its_python(
    tmp_path: Path, index: Path, docker_client, bullseye_image: str
) -> None:
    """A UP42-style block (own Dockerfile, no blockkit) on the Python 3.9 base: its image has bkt-capped 2.0."""
    from blockkit.runner._build import build_block_image

    block = tmp_path / "capped-block"
    (block / "src").mkdir(parents=True)
    (block / "requirements.txt").write_text("bkt-sibling\nbkt-capped\npytest\n")
    (block / "UP42Manifest.json").write_text(json.dumps({
        "_up42_specification_version": 2, "name": "capped-block", "type": "processing", "tags": ["test"],
        "display_name": "capped", "description": "Imports the packages it asks for.", "parameters": {},
        "machine": {"type": "small"},
        "input_capabilities": {"raster": {"up42_standard": {"format": "GTiff"}}},
        "output_capabilities": {"raster": {"up42_standard": {"format": "GTiff"}}},
    }))
    (block / "Dockerfile").write_text(
        "ARG BASE=blockkit-base:bullseye\nFROM $BASE\nARG manifest\nLABEL \"up42_manifest\"=$manifest\n"
        "WORKDIR /block\nCOPY requirements.txt /block\nRUN pip install -r requirements.txt\n"
        "COPY src /block/src\nCMD [\"python\", \"/block/src/run.py\"]\n"
    )
    (block / "src" / "run.py").write_text("import bkt_capped, bkt_sibling\nprint(bkt_capped.VERSION, bkt_sibling.VERSION)\n")
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    _wheel(wheelhouse, "bkt-capped", "1.0", ">=3.7", [])  # stale, from an earlier build
    built = build_block_image(block, base_image=bullseye_image, wheelhouse=wheelhouse, client=docker_client)
    try:
        out = docker_client.containers.run(built.tag, remove=True, network_mode="none")
        assert out.decode().split() == ["2.0", "1.0"]
        assert any("development tools left out" in w for w in built.warnings)
    finally:
        docker_client.images.remove(built.tag, force=True)


def test_a_corrupt_or_hostile_record_is_not_trusted(tmp_path: Path, index: Path) -> None:
    from blockkit.runner import _wheelhouse

    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    req = tmp_path / "requirements.txt"
    req.write_text("bkt-fresh\n")
    secret = tmp_path / "secret.whl"
    secret.write_text("not for the image")
    runs = []

    def resolve(name: str) -> set[str]:
        subset = tmp_path / name

        def real() -> list[str]:
            runs.append(name)
            return resolve_wheels(["-r", str(req)], subset, wheelhouse, TARGET, requirements=req)

        _wheelhouse.cached_resolution(["own", "bkt-fresh\n"], subset, wheelhouse, TARGET, real)
        return {w.name for w in subset.iterdir()}

    assert resolve("one") == {"bkt_fresh-2.0-py3-none-any.whl"}
    (record,) = (wheelhouse / ".resolved").iterdir()
    record.write_text(json.dumps({"wheels": ["../secret.whl"], "warnings": [], "constraints": ""}))
    assert resolve("two") == {"bkt_fresh-2.0-py3-none-any.whl"}  # resolved again, nothing from outside
    (record,) = (wheelhouse / ".resolved").iterdir()
    record.write_text("{not json")
    assert resolve("three") == {"bkt_fresh-2.0-py3-none-any.whl"}
    assert runs == ["one", "two", "three"]
