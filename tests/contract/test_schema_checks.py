"""The schema checks generated ahead of time (`scripts/schema-checks`): current, used, and never trusted when stale."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import fastjsonschema
import pytest

from blockkit.contract import _schema_checks
from blockkit.contract._datajson import _feature_validator, feature_schema, load_schema
from blockkit.contract._manifest import _fast_validator

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "schema-checks"

MANIFEST = {"_up42_specification_version": 2, "name": "ndvi", "type": "processing",
            "input_capabilities": {}, "output_capabilities": {}}
FEATURE = {"type": "Feature", "geometry": None, "properties": {"up42.data_path": "a.tif"}}


def test_the_generated_modules_are_those_of_the_shipped_schemas() -> None:
    """A schema edited without regenerating its module fails here (the package would compile it at run time)."""
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_another_fastjsonschema_release_does_not_make_the_modules_stale() -> None:
    """pyproject allows other releases; only a module made from another schema is stale."""
    code = ("import runpy, sys, fastjsonschema\n"
            "fastjsonschema.VERSION = '9.9.9'\n"
            f"sys.argv = ['schema-checks', '--check']\nrunpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_package_uses_the_generated_checks() -> None:
    from blockkit.contract._schema_checks import _feature as feature, _manifest as manifest

    assert _fast_validator() is manifest.check
    assert _feature_validator() is feature.check
    assert manifest.SCHEMA == _schema_checks.schema_text(load_schema("UP42Manifest.schema.json"))


def test_a_schema_that_differs_from_the_generated_module_is_compiled_instead() -> None:
    """A stale module must not check against the old schema: the changed rule applies."""
    from blockkit.contract._schema_checks import _manifest as manifest

    changed = copy.deepcopy(load_schema("UP42Manifest.schema.json"))
    changed["properties"]["name"]["maxLength"] = 3
    check = _schema_checks.schema_check("manifest", changed)
    assert check is not manifest.check
    manifest.check(copy.deepcopy(MANIFEST))  # the generated one knows nothing of the new rule
    with pytest.raises(fastjsonschema.JsonSchemaException, match="name"):
        check(copy.deepcopy(MANIFEST))


def test_a_missing_or_doctored_module_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from blockkit.contract._schema_checks import _feature as feature

    schema = feature_schema()
    assert _schema_checks.schema_check("no-such-module", schema) is not feature.check
    monkeypatch.setattr(feature, "SCHEMA", feature.SCHEMA.replace("Feature", "Featur"))
    compiled = _schema_checks.schema_check("feature", schema)
    assert compiled is not feature.check
    compiled(copy.deepcopy(FEATURE))
    with pytest.raises(fastjsonschema.JsonSchemaException):
        compiled({"type": "Feature"})


@pytest.mark.parametrize("data", [
    MANIFEST, {**MANIFEST, "name": "Bad Name"}, {**MANIFEST, "type": "nope"}, {**MANIFEST, "machine": {"type": "huge"}},
    {k: v for k, v in MANIFEST.items() if k != "name"}, [], "manifest",
])
def test_generated_and_compiled_manifest_checks_agree(data: object) -> None:
    _agree(load_schema("UP42Manifest.schema.json"), _fast_validator(), data)


@pytest.mark.parametrize("data", [
    FEATURE, {**FEATURE, "geometry": {"type": "Point", "coordinates": [13.4, 52.5]}},
    {**FEATURE, "geometry": {"type": "Point"}}, {**FEATURE, "properties": None}, {"type": "Feature"},
    {**FEATURE, "type": "FeatureCollection"}, {**FEATURE, "bbox": [1, 2]}, None,
])
def test_generated_and_compiled_feature_checks_agree(data: object) -> None:
    _agree(feature_schema(), _feature_validator(), data)


def _agree(schema: dict, generated, data: object) -> None:  # type: ignore[no-untyped-def, type-arg]
    compiled = fastjsonschema.compile(schema)
    outcomes = []
    for check in (generated, compiled):
        try:
            outcomes.append(("ok", json.dumps(check(copy.deepcopy(data)), sort_keys=True)))
        except fastjsonschema.JsonSchemaException as exc:
            outcomes.append(("rejected", str(exc)))
    assert outcomes[0] == outcomes[1]


def test_a_block_start_compiles_no_schema(tmp_path: Path) -> None:
    """What a block does when it starts (manifest, input data.json) must not run fastjsonschema's compiler."""
    (tmp_path / "UP42Manifest.json").write_text(json.dumps(MANIFEST))
    (tmp_path / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {**FEATURE, "properties": {}}]}))
    code = (
        "import sys, fastjsonschema\n"
        "def refuse(*a, **k): raise SystemExit('fastjsonschema.compile was called')\n"
        "fastjsonschema.compile = refuse\n"
        "from pathlib import Path\n"
        "from blockkit.contract._manifest import load_manifest\n"
        "from blockkit.contract._datajson import load_data_json\n"
        f"load_manifest(Path({str(tmp_path)!r}) / 'UP42Manifest.json')\n"
        f"print(len(load_data_json(Path({str(tmp_path)!r})).features))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
