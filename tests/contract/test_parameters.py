"""Block parameters: parsed from UP42_TASK_PARAMETERS, checked against the manifest, defaults applied."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from blockkit.contract.errors import ExitCode, InputParametersError
from blockkit.contract._manifest import Manifest, parse_manifest
from blockkit.contract._parameters import (
    MAX_PARAMETERS_BYTES,
    REDACTED,
    parse_date_range,
    parse_parameters_text,
    redact_parameters,
    resolve_parameters,
)

SQUARE = {"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.1, 52.0], [13.1, 52.1], [13.0, 52.1], [13.0, 52.0]]]}
BOWTIE = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}


def make_manifest(parameters: dict[str, Any]) -> Manifest:
    """A valid processing-block manifest declaring the given parameters."""
    return parse_manifest(
        {
            "_up42_specification_version": 2,
            "name": "params-test",
            "type": "processing",
            "parameters": parameters,
            "input_capabilities": {"raster": {}},
            "output_capabilities": {"raster": {}},
        }
    )


MANIFEST = make_manifest(
    {
        "aoi": {"type": "geometry"},
        "time": {"type": "dateRange", "default": "2024-01-01T00:00:00Z/2024-02-01T00:00:00Z"},
        "mode": {"type": "string", "default": "fast", "enum": ["fast", "slow"]},
        "threshold": {"type": "number", "default": 0.3, "minimum": -1, "maximum": 1},
        "size": {"type": "integer", "default": 512, "minimum": 1, "maximum": 4096},
        "clip": {"type": "boolean", "default": False},
        "bands": {"type": "array", "default": ["red"], "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "level": {"type": "integer", "enum": [1, 2, 3]},
        "token": {"type": "string", "secret": True},
    }
)


def problem_for(given: dict[str, Any], manifest: Manifest = MANIFEST) -> InputParametersError:
    """Resolve parameters expecting exactly the INPUT_PARAMETERS_ERROR with a one-line headline."""
    with pytest.raises(InputParametersError) as info:
        resolve_parameters(manifest, given)
    err = info.value
    assert err.exit_code == ExitCode.INPUT_PARAMETERS_ERROR == 2
    assert "\n" not in err.headline() and err.headline().startswith("[INPUT_PARAMETERS_ERROR] invalid parameters: ")
    return err


def test_defaults_are_applied() -> None:
    resolved = resolve_parameters(MANIFEST, {})
    assert resolved == {
        "aoi": None,
        "time": "2024-01-01T00:00:00Z/2024-02-01T00:00:00Z",
        "mode": "fast",
        "threshold": 0.3,
        "size": 512,
        "clip": False,
        "bands": ["red"],
        "level": None,
        "token": None,
    }


def test_given_values_override_defaults_and_null_means_default() -> None:
    resolved = resolve_parameters(MANIFEST, {"mode": "slow", "size": None, "clip": True, "aoi": SQUARE})
    assert resolved["mode"] == "slow" and resolved["size"] == 512 and resolved["clip"] is True
    assert resolved["aoi"] == SQUARE


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"size": 3.0}, 3),
        ({"size": 4096}, 4096),
        ({"size": 1}, 1),
        ({"threshold": -1}, -1),
        ({"threshold": 1.0}, 1.0),
        ({"threshold": 0}, 0),
        ({"level": 2.0}, 2),
        ({"bands": ["red", "nir", "blue"]}, ["red", "nir", "blue"]),
    ],
)
def test_valid_values(given: dict[str, Any], expected: Any) -> None:
    (name,) = given
    value = resolve_parameters(MANIFEST, given)[name]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"size": 3.5}, "must be an integer, not a number"),
        ({"size": "3"}, "must be an integer, not a string"),
        ({"size": True}, "must be an integer, not a boolean"),
        ({"threshold": True}, "must be a number, not a boolean"),
        ({"threshold": "0.5"}, "must be a number, not a string"),
        ({"threshold": [0.5]}, "must be a number, not an array"),
        ({"clip": 1}, "must be true or false, not a number"),
        ({"clip": "true"}, "must be true or false, not a string"),
        ({"mode": 5}, "must be a string, not a number"),
        ({"mode": {"a": 1}}, "must be a string, not an object"),
        ({"size": 0}, "0 is below the minimum 1"),
        ({"size": 4097}, "4097 is above the maximum 4096"),
        ({"threshold": -1.0001}, "is below the minimum -1"),
        ({"threshold": 1e308}, "is above the maximum 1"),
        ({"mode": "medium"}, "'medium' is not one of ['fast', 'slow']"),
        ({"level": 4}, "4 is not one of [1, 2, 3]"),
        ({"bands": "red"}, "must be an array, not a string"),
        ({"bands": []}, "must have at least 1 items"),
        ({"bands": ["a", "b", "c", "d"]}, "must have at most 3 items"),
        ({"bands": ["red", 5]}, "item 1: 5 is not of type 'string'"),
        ({"aoi": BOWTIE}, "is not a valid geometry: Self-intersection"),
        ({"aoi": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}}, "aoi"),
        ({"aoi": {"type": "Point", "coordinates": [1]}}, "is not valid GeoJSON"),
        ({"aoi": {"type": "Polygon", "coordinates": []}}, "is an empty geometry"),
        ({"aoi": {"coordinates": [1, 2]}}, "must be a GeoJSON geometry object with a 'type'"),
        ({"aoi": "POLYGON ((0 0, 1 0, 1 1, 0 0))"}, "must be a GeoJSON geometry object"),
        ({"aoi": {"type": "Feature", "properties": {}, "geometry": None}}, "the Feature has no geometry"),
        ({"time": "2024-02-01T00:00:00Z/2024-01-01T00:00:00Z"}, "start is after end"),
        ({"time": "yesterday/today"}, "is not a valid date range"),
        ({"time": "2024-01-01/2024-02-01/2024-03-01"}, "at most one '/'"),
        ({"time": "../.."}, "needs at least one end"),
        ({"time": "2024-01-01T00:00:00Z/2024-02-01T00:00:00"}, "both ends must have a time zone"),
        ({"time": 20240101}, "must be a date range string"),
    ],
)
def test_invalid_value_names_the_parameter(given: dict[str, Any], expected: str) -> None:
    (name,) = given
    err = problem_for(given)
    assert f"parameter {name!r}: " in err.headline()
    assert expected in err.headline()
    assert len(err.problems) == 1


@pytest.mark.parametrize(
    "value",
    [
        "2024-01-01T00:00:00Z/2024-02-01T00:00:00Z",
        "2024-01-01T00:00:00+02:00/2024-02-01T00:00:00+02:00",
        "2024-01-01/2024-02-01",
        "../2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00Z/..",
        "2024-01-01T00:00:00Z/",
        "/2024-01-01T00:00:00Z",
        "2024-01-01T10:00:00Z",
        "2024-01-01T00:00:00.123456Z/2024-01-01T00:00:00.123456Z",
    ],
)
def test_date_range_formats(value: str) -> None:
    assert resolve_parameters(MANIFEST, {"time": value})["time"] == value


def test_date_range_open_ends_parse_to_none() -> None:
    start, end = parse_date_range("../2024-01-01T00:00:00Z")
    assert start is None and end == datetime(2024, 1, 1, tzinfo=timezone.utc)
    start, end = parse_date_range("2024-01-01T00:00:00Z/..")
    assert start == datetime(2024, 1, 1, tzinfo=timezone.utc) and end is None


def test_valid_geometries_incl_feature_and_multipolygon() -> None:
    feature = {"type": "Feature", "properties": {}, "geometry": SQUARE}
    multi = {"type": "MultiPolygon", "coordinates": [SQUARE["coordinates"]]}
    for value in (SQUARE, feature, multi, {"type": "Point", "coordinates": [13.4, 52.5]}):
        assert resolve_parameters(MANIFEST, {"aoi": value})["aoi"] == value


def test_unknown_parameter_lists_the_known_ones() -> None:
    err = problem_for({"treshold": 0.5})
    assert "parameter 'treshold': is not declared by block 'params-test'" in err.headline()
    assert "known: aoi, bands, clip" in err.headline()


def test_required_missing() -> None:
    manifest = make_manifest({"ids": {"type": "array", "required": True}, "n": {"type": "integer"}})
    err = problem_for({}, manifest)
    assert "parameter 'ids': is required" in err.headline()
    err = problem_for({"ids": None}, manifest)
    assert "is required" in err.headline()
    assert resolve_parameters(manifest, {"ids": ["a"]}) == {"ids": ["a"], "n": None}


def test_every_problem_is_listed_at_once() -> None:
    err = problem_for({"size": 0, "mode": "x", "clip": "no", "aoi": BOWTIE, "nope": 1, "time": "b/a"})
    wheres = sorted(p.where for p in err.problems)
    assert wheres == sorted(f"parameter {n!r}" for n in ("size", "mode", "clip", "aoi", "nope", "time"))
    assert "(and 5 more)" in err.headline()
    assert len(err.details().splitlines()) == 6


@pytest.mark.parametrize("text", [None, "", "   ", "null", "{}", " {} \n"])
def test_unset_empty_or_null_parameters_mean_empty(text: str | None) -> None:
    assert parse_parameters_text(text) == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[]", "must be a JSON object, not list"),
        ('"size"', "must be a JSON object, not str"),
        ("5", "must be a JSON object, not int"),
        ("true", "must be a JSON object, not bool"),
        ("{size: 5}", "is not valid JSON"),
        ('{"size": 5', "is not valid JSON"),
        ('{"threshold": NaN}', "NaN is not a valid JSON number"),
        ('{"threshold": Infinity}', "Infinity is not a valid JSON number"),
        ('{"threshold": -Infinity}', "-Infinity is not a valid JSON number"),
        ("[" * 100_000 + "]" * 100_000, "is not valid JSON"),
    ],
    ids=["list", "string", "number", "bool", "js-object", "truncated", "nan", "inf", "minus-inf", "deep-nesting"],
)
def test_bad_parameter_text(text: str, expected: str) -> None:
    with pytest.raises(InputParametersError) as info:
        parse_parameters_text(text)
    assert info.value.exit_code == 2
    assert info.value.headline().startswith("[INPUT_PARAMETERS_ERROR] UP42_TASK_PARAMETERS ")
    assert expected in info.value.headline()
    assert "\n" not in info.value.headline()


def test_oversized_parameters_are_refused() -> None:
    text = json.dumps({"mode": "x" * MAX_PARAMETERS_BYTES})
    with pytest.raises(InputParametersError) as info:
        parse_parameters_text(text, "--params")
    assert f"the limit is {MAX_PARAMETERS_BYTES}" in info.value.headline()
    assert info.value.headline().startswith("[INPUT_PARAMETERS_ERROR] --params is ")


def test_secret_parameters_are_redacted() -> None:
    resolved = resolve_parameters(MANIFEST, {"token": "s3cr3t", "mode": "slow"})
    redacted = redact_parameters(MANIFEST, resolved)
    assert redacted["token"] == REDACTED and redacted["mode"] == "slow"
    assert "s3cr3t" not in json.dumps(redacted)
    assert resolved["token"] == "s3cr3t"  # the original is untouched
    assert redact_parameters(MANIFEST, {"token": None})["token"] is None
    assert redact_parameters(None, {"token": "x"}) == {"token": "x"}


def test_secret_value_is_not_echoed_in_errors() -> None:
    manifest = make_manifest({"token": {"type": "string", "secret": True, "enum": ["a", "b"]}})
    err = problem_for({"token": "hunter2-very-secret"}, manifest)
    assert "parameter 'token'" in err.headline()
    assert "hunter2-very-secret" not in err.headline() + err.details()
