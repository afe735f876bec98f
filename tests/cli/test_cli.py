"""The CLI: validate, new and run, through the installed `blockkit` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BLOCKKIT = Path(sys.executable).with_name("blockkit")

MANIFEST: dict[str, Any] = {
    "_up42_specification_version": 2,
    "name": "cli-block",
    "type": "processing",
    "parameters": {"factor": {"type": "integer", "default": 1, "minimum": 1, "maximum": 5}},
    "input_capabilities": {"raster": {}},
    "output_capabilities": {"raster": {}},
}

RUN_PY = '''
import blockkit
from blockkit import FeatureCollection


@blockkit.processing_block
def process(fc, ctx):
    out = []
    for feature in fc:
        rel = f"{feature['id']}.txt"
        ctx.output_path(rel).write_bytes(ctx.input_path(feature).read_bytes() * ctx.params["factor"])
        out.append(ctx.derive_feature(feature, data_path=rel))
    return FeatureCollection(out)


if __name__ == "__main__":
    process.run()
'''


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed blockkit command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_"))}
    return subprocess.run([str(BLOCKKIT), *map(str, args)], capture_output=True, text=True, timeout=180, cwd=cwd, env=env)


def assert_one_line_failure(result: subprocess.CompletedProcess[str], tag: str) -> list[str]:
    """Non-zero exit, a headline line with the tag, no traceback; returns the stderr lines."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert lines and lines[0].startswith(f"[{tag}] "), result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    return lines


@pytest.fixture
def block(tmp_path: Path) -> Path:
    folder = tmp_path / "cli-block"
    (folder / "src").mkdir(parents=True)
    (folder / "UP42Manifest.json").write_text(json.dumps(MANIFEST))
    (folder / "src" / "run.py").write_text(RUN_PY)
    return folder


@pytest.fixture
def input_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "input"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    feature = {"type": "Feature", "id": "a", "geometry": None, "properties": {"up42.data_path": "a.txt", "k": 1}}
    (folder / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return folder


# --- validate -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_validate_good_things(block: Path, input_dir: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text('{"factor": 3}')
    for target, extra, expected in (
        (block, [], "valid: manifest"),
        (block / "UP42Manifest.json", [], "processing block 'cli-block'"),
        (input_dir, [], "(1 features)"),
        (input_dir / "data.json", [], "(1 features)"),
        (params, ["--block", str(block)], "parameters"),
    ):
        result = cli("validate", target, *extra)
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout


def test_validate_shows_a_manifest_s_warnings_as_a_run_does(block: Path) -> None:
    manifest = json.loads((block / "UP42Manifest.json").read_text())
    manifest["parameters"]["factor"].update(required=True, default=2)
    (block / "UP42Manifest.json").write_text(json.dumps(manifest))
    for target in (block, block / "UP42Manifest.json"):
        result = cli("validate", target)
        assert result.returncode == 0, result.stderr
        assert "warning: parameters/factor: required with a default (2); the default is used when the value is missing" \
            in result.stderr


def test_validate_bad_manifest_lists_every_problem(block: Path) -> None:
    bad = dict(MANIFEST, name="Bad Name", _up42_specification_version=3, colour="red")
    bad["parameters"] = {"factor": {"type": "integer", "default": 9, "maximum": 5}}
    (block / "UP42Manifest.json").write_text(json.dumps(bad))
    result = cli("validate", block)
    lines = assert_one_line_failure(result, "WRONG_INPUT_ERROR")
    assert "(and 3 more)" in lines[0]
    body = "\n".join(lines[1:])
    for needle in ("_up42_specification_version", "name", "colour", "default 9 is above maximum 5"):
        assert needle in body
    assert len(lines) == 5


def test_validate_bad_data_json_lists_every_problem(input_dir: Path) -> None:
    fc = json.loads((input_dir / "data.json").read_text())
    fc["features"] += [
        {"type": "Feature", "geometry": None, "properties": {"up42.data_path": "../etc/passwd"}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}, "properties": {}},
    ]
    (input_dir / "data.json").write_text(json.dumps(fc))
    before = (input_dir / "data.json").read_bytes()
    for target in (input_dir, input_dir / "data.json"):
        lines = assert_one_line_failure(cli("validate", target), "WRONG_INPUT_ERROR")
        assert "feature 1: up42.data_path '../etc/passwd' leaves its folder (through '..') (and 1 more)" in lines[0]
        assert "feature 2: geometry: a polygon ring is not closed" in lines[2]
    assert (input_dir / "data.json").read_bytes() == before


def test_validate_feature_collection_under_another_name(input_dir: Path) -> None:
    fc = json.loads((input_dir / "data.json").read_text())
    fc["features"][0]["properties"]["up42.data_path"] = "/etc/passwd"
    (input_dir / "other.json").write_text(json.dumps(fc))
    lines = assert_one_line_failure(cli("validate", input_dir / "other.json"), "WRONG_INPUT_ERROR")
    assert "'/etc/passwd' is absolute" in lines[0]


def test_validate_bad_params_lists_every_problem(block: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text('{"factor": 9, "colour": "red"}')
    lines = assert_one_line_failure(cli("validate", params, "--block", block), "INPUT_PARAMETERS_ERROR")
    assert "(and 1 more)" in lines[0]
    assert any("parameter 'factor': 9 is above the maximum 5" in line for line in lines)
    assert any("parameter 'colour'" in line for line in lines)


def test_validate_params_without_block(tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text('{"factor": 2}')
    lines = assert_one_line_failure(cli("validate", params), "INPUT_PARAMETERS_ERROR")
    assert "--block" in lines[0]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("x.json", b"{broken", "is not valid JSON"),
        ("x.json", b"\xff\xfe", "is not UTF-8"),
        ("UP42Manifest.json", b"[]", "must be a JSON object"),
        ("data.json", b'{"type": "FeatureCollection", "features": [], "x": NaN}', "NaN"),
    ],
)
def test_validate_unreadable_files(tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    (tmp_path / name).write_bytes(content)
    result = cli("validate", tmp_path / name)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert expected in result.stderr.splitlines()[0]


def test_validate_missing_and_empty_folder(tmp_path: Path) -> None:
    result = cli("validate", tmp_path / "nope")
    assert result.returncode != 0 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "empty").mkdir()
    result = cli("validate", tmp_path / "empty")
    assert result.returncode != 0 and "holds no UP42Manifest.json" in result.stderr


def test_validate_block_without_code(block: Path) -> None:
    (block / "src" / "run.py").unlink()
    lines = assert_one_line_failure(cli("validate", block), "WRONG_INPUT_ERROR")
    assert "has no src/run.py" in lines[0]


# --- new ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_new_block_validates_and_its_tests_pass(tmp_path: Path) -> None:
    result = cli("new", "myblock", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    created = tmp_path / "myblock"
    assert {p.name for p in created.iterdir()} >= {"UP42Manifest.json", "src", "tests", "Dockerfile", "README.md"}
    text = "".join(p.read_text() for p in created.rglob("*") if p.is_file())
    assert "{{" not in text and "myblock" in (created / "UP42Manifest.json").read_text()
    result = cli("validate", "myblock", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(created / "tests")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout


@pytest.mark.parametrize("name", ["My Block", "x", "../escape", "UPPER", "a.b"])
def test_new_refuses_bad_names(tmp_path: Path, name: str) -> None:
    result = cli("new", name, "--dir", tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "block name" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_new_refuses_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("keep")
    result = cli("new", "taken", "--dir", tmp_path)
    assert result.returncode != 0 and "already exists" in result.stderr
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]


# --- run ----------------------------------------------------------------------------------------


def run_block(block: Path, input_dir: Path, output: Path, runs: Path, *params: str) -> subprocess.CompletedProcess[str]:
    return cli("run", block, "--engine", "process", "--runs-dir", runs, "--input", input_dir, "--output", output, *params)


def test_run_ok(block: Path, input_dir: Path, tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in input_dir.iterdir()}
    result = run_block(block, input_dir, tmp_path / "out", tmp_path / "runs", "--params", '{"factor": 2}')
    assert result.returncode == 0, result.stderr
    produced = list((tmp_path / "out").rglob("a.txt")) + list((tmp_path / "runs").rglob("a.txt"))
    assert produced and all(p.read_text() == "aa" for p in produced)
    assert {p: p.read_bytes() for p in input_dir.iterdir()} == before
    assert list((tmp_path / "runs").iterdir())  # the run folder went where we said


def test_run_params_file(block: Path, input_dir: Path, tmp_path: Path) -> None:
    params = tmp_path / "p.json"
    params.write_text('{"factor": 3}')
    result = run_block(block, input_dir, tmp_path / "out", tmp_path / "runs", "--params", f"@{params}")
    assert result.returncode == 0, result.stderr
    produced = list((tmp_path / "out").rglob("a.txt"))
    assert produced and produced[0].read_text() == "aaa"


def test_run_bad_params_exit_2(block: Path, input_dir: Path, tmp_path: Path) -> None:
    result = run_block(block, input_dir, tmp_path / "out", tmp_path / "runs", "--params", '{"factor": 9}')
    assert result.returncode == 2, result.stderr
    assert "factor" in result.stderr and "Traceback" not in result.stderr


def test_run_bad_params_text_exit_2(block: Path, input_dir: Path, tmp_path: Path) -> None:
    result = run_block(block, input_dir, tmp_path / "out", tmp_path / "runs", "--params", "{factor: 9}")
    assert result.returncode == 2, result.stderr
    assert "[INPUT_PARAMETERS_ERROR]" in result.stderr and "Traceback" not in result.stderr


def test_run_bad_input_exit_4(block: Path, input_dir: Path, tmp_path: Path) -> None:
    fc = json.loads((input_dir / "data.json").read_text())
    fc["features"][0]["properties"]["up42.data_path"] = "../etc/passwd"
    (input_dir / "data.json").write_text(json.dumps(fc))
    before = (input_dir / "data.json").read_bytes()
    result = run_block(block, input_dir, tmp_path / "out", tmp_path / "runs")
    assert result.returncode == 4, result.stderr
    assert "../etc/passwd" in result.stderr and "Traceback" not in result.stderr
    assert (input_dir / "data.json").read_bytes() == before
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("data.json"))


@pytest.mark.slow
def test_run_new_block_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("rasterio")
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    assert cli("new", "scaler", "--dir", tmp_path).returncode == 0
    folder = tmp_path / "in"
    folder.mkdir()
    with rasterio.open(folder / "s.tif", "w", driver="GTiff", width=32, height=32, count=1, dtype="uint16",
                       crs="EPSG:4326", transform=from_origin(13, 52, 0.001, 0.001)) as dst:
        dst.write(np.full((1, 32, 32), 4, dtype="uint16"))
    feature = {"type": "Feature", "id": "s", "geometry": None, "properties": {"up42.data_path": "s.tif"}}
    (folder / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    result = run_block(tmp_path / "scaler", folder, tmp_path / "out", tmp_path / "runs", "--params", '{"factor": 0.5}')
    assert result.returncode == 0, result.stderr
    outputs = list((tmp_path / "out").rglob("s_scaled.tif"))
    assert outputs
    with rasterio.open(outputs[0]) as src:
        assert float(src.read(1).mean()) == 2.0
