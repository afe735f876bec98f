"""UP42Manifest.json: a full v2 manifest loads; a bad one reports every problem at once."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from blockkit.contract._manifest import MAX_MANIFEST_BYTES, read_json_file
from blockkit.contract.errors import ExitCode, ManifestError
from blockkit.contract._manifest import MACHINE_TYPES, load_manifest, parse_manifest, validate_manifest

FULL: dict[str, Any] = {
    "_up42_specification_version": 2,
    "name": "full-block_1",
    "type": "processing",
    "tags": ["raster", "ndvi"],
    "display_name": "Full Block",
    "description": "Every field a v2 manifest can have.",
    "version": "1.2.3",
    "parameters": {
        "aoi": {"type": "geometry", "description": "area"},
        "time": {"type": "dateRange", "default": "2024-01-01T00:00:00Z/2024-02-01T00:00:00Z"},
        "mode": {"type": "string", "default": "fast", "enum": ["fast", "slow"]},
        "threshold": {"type": "number", "default": 0.3, "minimum": -1, "maximum": 1},
        "size": {"type": "integer", "default": 512, "minimum": 1, "maximum": 4096},
        "clip": {"type": "boolean", "default": False},
        "bands": {"type": "array", "default": ["red"], "items": {"type": "string"}, "minItems": 1, "maxItems": 4},
        "ids": {"type": "array", "required": True},
        "token": {"type": "string", "secret": True},
    },
    "machine": {"type": "xlarge"},
    "optional_features": {"quicklook_supported": True, "dry_run_supported": False},
    "input_capabilities": {
        "raster": {
            "up42_standard": {"format": "GTiff", "bands": ["red", "nir"], "sensor": {"or": ["Sentinel2", "Landsat8"]}},
            "custom": {"level": "${mode}"},
        }
    },
    "output_capabilities": {
        "raster": {"up42_standard": {"format": "GTiff", "bands": ">", "resolution": ">", "dtype": "float32"}},
        "vector": {"custom": {"kind": "${mode}"}},
    },
    "blockkit": {"s3": True, "network": False, "propagate": True, "command": ["python", "-m", "x"], "timeout": 60, "keys": ["s3"]},
}


def write_manifest(folder: Path, data: dict[str, Any]) -> Path:
    """Write UP42Manifest.json into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "UP42Manifest.json"
    path.write_text(json.dumps(data))
    return path


def manifest_error(path: Path) -> ManifestError:
    """Load a manifest expecting ManifestError with a one-line headline."""
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert "\n" not in info.value.headline()
    assert info.value.exit_code != ExitCode.OK
    return info.value


def test_full_manifest_loads_from_folder_and_file(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "block", FULL)
    for source in (tmp_path / "block", path):
        m = load_manifest(source)
        assert m.name == "full-block_1" and m.type == "processing" and not m.is_data_block
        assert set(m.parameters) == set(FULL["parameters"])
        assert m.parameters["threshold"].minimum == -1 and m.parameters["threshold"].default == 0.3
        assert m.parameters["ids"].required and not m.parameters["ids"].has_default
        assert m.parameters["clip"].has_default and m.parameters["clip"].default is False
        assert m.secret_parameters == {"token"}
        assert m.machine_type == "xlarge" and m.resources == (4, 20480)
        assert m.quicklook_supported and not m.dry_run_supported
        assert m.s3_gateway and m.propagate and not m.network
        assert m.command == ["python", "-m", "x"]
        assert m.tags == ("raster", "ndvi") and m.version == "1.2.3"
        assert m.output_capabilities["raster"]["up42_standard"]["bands"] == ">"
        assert m.path == path


@pytest.mark.parametrize("machine", sorted(MACHINE_TYPES))
def test_every_machine_type_is_accepted(machine: str) -> None:
    data = dict(FULL, machine={"type": machine})
    assert parse_manifest(data).machine_type == machine


def test_minimal_data_block_defaults() -> None:
    m = parse_manifest(
        {"_up42_specification_version": 2, "name": "scene", "type": "data", "input_capabilities": {}, "output_capabilities": {"raster": {}}}
    )
    assert m.is_data_block and not m.network and not m.s3_gateway and not m.propagate
    assert m.machine_type == "small" and m.parameters == {} and m.command is None


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    bad = copy.deepcopy(FULL)
    bad["_up42_specification_version"] = 1
    bad["name"] = "Bad Name!"
    bad["colour"] = "blue"
    bad["machine"] = {"type": "huge"}
    bad["parameters"] = {
        "lohi": {"type": "number", "minimum": 10, "maximum": 1},
        "low": {"type": "number", "default": -5, "minimum": 0},
        "high": {"type": "integer", "default": 50, "maximum": 10},
        "typed": {"type": "integer", "default": "ten"},
        "flag": {"type": "boolean", "default": 1},
        "count": {"type": "integer", "default": True},
        "choice": {"type": "string", "default": "c", "enum": ["a", "b"]},
        "weird": {"type": "colour"},
        "extra": {"type": "string", "color": "red"},
        "textmin": {"type": "string", "minimum": 1},
    }
    bad["blockkit"] = {"s3": "yes", "gpu": True}
    path = write_manifest(tmp_path / "block", bad)
    err = manifest_error(path)
    text = err.details()
    expected = [
        ("_up42_specification_version", "UP42 specification v1 is not supported: upgrade the manifest to v2"),
        ("name", "'Bad Name!' must be 2-63 lowercase"),
        ("manifest", "unknown key(s)"),
        ("machine/type", "'huge' is not one of"),
        ("parameters/lohi", "minimum 10 is greater than maximum 1"),
        ("parameters/low", "default -5 is below minimum 0"),
        ("parameters/high", "default 50 is above maximum 10"),
        ("parameters/typed", "default 'ten' is not of type integer"),
        ("parameters/flag", "default 1 is not of type boolean"),
        ("parameters/count", "default True is not of type integer"),
        ("parameters/choice", "default 'c' is not one of ['a', 'b']"),
        ("parameters/weird/type", "'colour' is not one of"),
        ("parameters/extra", "unknown key(s)"),
        ("parameters/textmin", "minimum/maximum only apply to number or integer"),
        ("blockkit/s3", "is not of type 'boolean'"),
        ("blockkit", "unknown key(s)"),
    ]
    for where, what in expected:
        assert any(p.where == where and what in p.message for p in err.problems), (where, what, text)
    assert len(err.problems) >= len(expected)
    assert f"(and {len(err.problems) - 1} more)" in err.headline()
    assert "colour" in text and "gpu" in text


def test_data_block_with_input_capabilities() -> None:
    data = dict(FULL, type="data")
    problems = validate_manifest(data)
    assert any(p.where == "input_capabilities" and "data block has no input" in p.message for p in problems)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"type": "transform"}, "type"),
        ({"name": "a"}, "name"),
        ({"name": "-leading"}, "name"),
        ({"name": "x" * 64}, "name"),
        ({"tags": "raster"}, "tags"),
        ({"parameters": []}, "parameters"),
        ({"parameters": {"p": {}}}, "parameters/p"),
        ({"parameters": {"9lives": {"type": "string"}}}, "parameters"),
        ({"parameters": {"e": {"type": "string", "enum": []}}}, "parameters/e/enum"),
        ({"optional_features": {"turbo": True}}, "optional_features"),
        ({"input_capabilities": {"raster": {"standard": {}}}}, "input_capabilities/raster"),
        ({"output_capabilities": []}, "output_capabilities"),
        ({"machine": {}}, "machine"),
        ({"blockkit": {"command": []}}, "blockkit/command"),
        ({"blockkit": {"timeout": 0}}, "blockkit/timeout"),
    ],
)
def test_single_problem_is_located(change: dict[str, Any], where: str) -> None:
    problems = validate_manifest({**FULL, **change})
    assert any(p.where == where for p in problems), problems


@pytest.mark.parametrize("key", ["_up42_specification_version", "name", "type", "input_capabilities", "output_capabilities"])
def test_required_keys(key: str) -> None:
    data = {k: v for k, v in FULL.items() if k != key}
    problems = validate_manifest(data)
    assert any(f"'{key}' is a required property" in p.message for p in problems)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "is not valid JSON"),
        ("", "is not valid JSON"),
        (b"\xff\xfe{}", "is not UTF-8"),
        ("[]", "must be a JSON object"),
        ("null", "must be a JSON object"),
        ('{"_up42_specification_version": NaN}', "NaN"),
        ("[" * 100_000 + "]" * 100_000, "is not valid JSON"),
    ],
    ids=["garbage", "empty", "non-utf8", "list", "null", "nan", "deep-nesting"],
)
def test_unreadable_manifest_is_one_line(tmp_path: Path, content: str | bytes, expected: str) -> None:
    path = tmp_path / "UP42Manifest.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    err = manifest_error(path)
    assert expected in err.headline()


def test_missing_manifest(tmp_path: Path) -> None:
    assert "manifest not found" in manifest_error(tmp_path / "nope" / "UP42Manifest.json").headline()
    assert "manifest not found" in manifest_error(tmp_path).headline()  # a folder without one


def test_manifest_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "UP42Manifest.json").mkdir()
    assert "not found" in manifest_error(tmp_path / "UP42Manifest.json").headline()
    with pytest.raises(ManifestError) as info:
        read_json_file(tmp_path / "UP42Manifest.json", "manifest")
    assert "is a directory" in info.value.headline()


def test_really_huge_manifest_is_refused_with_the_default_limit(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, dict(FULL, description="x" * (MAX_MANIFEST_BYTES + 10)))
    err = manifest_error(path)
    assert "bytes; the limit is" in err.headline()


def test_manifest_file_is_not_modified(tmp_path: Path) -> None:
    bad = dict(FULL, name="BAD")
    path = write_manifest(tmp_path, bad)
    before = path.read_bytes()
    manifest_error(path)
    assert path.read_bytes() == before


def test_required_parameter_with_default_is_accepted_with_a_warning(tmp_path: Path) -> None:
    """UP42's own raster tiling manifest: `tile_width` is required and has a default."""
    from blockkit.contract._parameters import resolve_parameters

    data = copy.deepcopy(FULL)
    data["parameters"] = {
        "tile_width": {"type": "number", "required": True, "default": 768},
        "ids": {"type": "array", "required": True},
    }
    m = load_manifest(write_manifest(tmp_path / "block", data))
    assert len(m.warnings) == 1 and m.warnings[0].startswith("parameters/tile_width: required with a default (768)")
    assert resolve_parameters(m, {"ids": ["a"]}) == {"tile_width": 768, "ids": ["a"]}
    assert resolve_parameters(m, {"ids": ["a"], "tile_width": 256})["tile_width"] == 256
    with pytest.raises(Exception, match="is required"):
        resolve_parameters(m, {"tile_width": 256})  # no default: still required


def test_spec_v1_is_refused_saying_how_to_upgrade(tmp_path: Path) -> None:
    data = copy.deepcopy(FULL)
    data["_up42_specification_version"] = 1
    err = manifest_error(write_manifest(tmp_path / "block", data))
    assert err.exit_code == ExitCode.WRONG_INPUT_ERROR
    assert len(err.problems) == 1
    assert '"_up42_specification_version": 2' in err.problems[0].message and "docs/up42.md" in err.problems[0].message


def _variants() -> list[dict[str, Any]]:
    """Valid and broken manifests: every one in the repository and single changes of FULL."""
    repo = Path(__file__).resolve().parents[2]
    found = [json.loads(p.read_text()) for p in sorted(repo.glob("examples/**/UP42Manifest.json"))]
    found += [json.loads(p.read_text()) for p in sorted(repo.glob("blockkit/templates/**/UP42Manifest.json"))]
    changes: list[dict[str, Any]] = [
        {}, {"type": "transform"}, {"name": "a"}, {"name": "ab\n"}, {"name": "x" * 64}, {"tags": "raster"},
        {"tags": [1]}, {"parameters": []}, {"parameters": {"p": {}}}, {"parameters": {"9lives": {"type": "string"}}},
        {"parameters": {"e": {"type": "string", "enum": []}}}, {"optional_features": {"turbo": True}},
        {"input_capabilities": {"raster": {"standard": {}}}}, {"output_capabilities": []}, {"machine": {}},
        {"machine": {"type": "huge"}}, {"blockkit": {"command": []}}, {"blockkit": {"timeout": 0}},
        {"blockkit": {"timeout": True}}, {"blockkit": {"timeout": 1.0}}, {"blockkit": {"s3": 1}},
        {"_up42_specification_version": 1}, {"_up42_specification_version": 2.0},
        {"_up42_specification_version": True}, {"colour": "blue"}, {"display_name": None},
    ]
    return found + [{**FULL, **change} for change in changes]


@pytest.mark.parametrize("data", _variants())
def test_fast_schema_check_never_passes_what_jsonschema_rejects(data: dict[str, Any]) -> None:
    """The compiled fast path may only skip jsonschema for manifests jsonschema itself accepts."""
    import fastjsonschema

    from blockkit.contract._manifest import _fast_validator, _validator

    try:
        _fast_validator()(data)
        fast_ok = True
    except fastjsonschema.JsonSchemaException:
        fast_ok = False
    slow_ok = not list(_validator().iter_errors(data))
    assert slow_ok or not fast_ok, data
    # Either way validate_manifest reports what jsonschema reports.
    assert any(True for _ in validate_manifest(data)) or slow_ok


def test_a_valid_manifest_is_checked_without_importing_jsonschema(tmp_path: Path) -> None:
    """A block's start (once per feature of a scattered step) must not pay for jsonschema's import."""
    import subprocess
    import sys

    path = write_manifest(tmp_path / "block", FULL)
    code = ("import sys; from blockkit.contract import load_manifest; "
            f"load_manifest({str(path)!r}); print('jsonschema' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_machine_type_table_in_contract_md_is_the_code_s() -> None:
    import re

    from blockkit.contract._manifest import MACHINE_TYPES

    text = (Path(__file__).parents[2] / "docs" / "contract.md").read_text()
    documented = {}
    for names, cpus, gib in re.findall(r"^\| (`[a-z_0-9`, ]+`) \| ([\d.]+) \| (\d+) GiB", text, re.M):
        for name in re.findall(r"`([a-z_0-9]+)`", names):
            documented[name] = (float(cpus), int(gib) * 1024)
    assert documented == {name: (float(cpus), mb) for name, (cpus, mb) in MACHINE_TYPES.items()}
