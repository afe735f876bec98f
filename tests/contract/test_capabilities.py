"""Capability matching: the rule of docs/capabilities.md, case by case."""

from __future__ import annotations

from typing import Any

import pytest

from blockkit.contract._capabilities import UNKNOWN, match_problems, resolve_output

SCENE_OUT = {"raster": {"up42_standard": {"format": "GTiff", "bands": ["blue", "green", "red", "nir"], "dtype": "uint16", "sensor": "Sentinel2"}}}


def raster(**keys: Any) -> dict[str, Any]:
    """Raster capabilities with up42_standard keys."""
    return {"raster": {"up42_standard": keys}}


def matches(required: dict[str, Any], offered: dict[str, Any], params: dict[str, Any] | None = None) -> bool:
    """True when a block reading `required` can follow a step producing `offered`."""
    return match_problems(required, {"up": offered}, params or {}) == []


def test_pass_through_resolves_across_a_chain() -> None:
    ndvi_out = raster(format="GTiff", bands=["ndvi"], dtype="float32", sensor=">", resolution=">")
    ndvi = resolve_output(ndvi_out, [SCENE_OUT], {})
    assert ndvi["raster"]["up42_standard"]["sensor"] == "Sentinel2"
    assert ndvi["raster"]["up42_standard"]["resolution"] is UNKNOWN  # nobody upstream declared it
    mask = resolve_output(raster(format="GTiff", sensor=">", bands=">"), [ndvi], {})
    assert mask["raster"]["up42_standard"] == {"format": "GTiff", "sensor": "Sentinel2", "bands": ["ndvi"]}
    assert matches(raster(sensor="Sentinel2"), mask)
    assert not matches(raster(sensor="Landsat8"), mask)


def test_pass_through_takes_the_first_upstream_declaring_the_key() -> None:
    a = raster(sensor="Sentinel2")
    b = raster(sensor="Landsat8", level="L2A")
    out = resolve_output(raster(sensor=">", level=">"), [a, b], {})["raster"]["up42_standard"]
    assert out == {"sensor": "Sentinel2", "level": "L2A"}


def test_pass_through_only_looks_in_the_same_group_and_section() -> None:
    up = {"vector": {"up42_standard": {"sensor": "S2"}}, "raster": {"custom": {"sensor": "S1"}}}
    out = resolve_output(raster(sensor=">"), [up], {})
    assert out["raster"]["up42_standard"]["sensor"] is UNKNOWN


def test_undeclared_values_match_anything() -> None:
    assert matches(raster(resolution=10), raster(format="GTiff"))
    assert matches(raster(resolution=10), resolve_output(raster(resolution=">"), [], {}))
    # ">" in input capabilities asks for nothing in particular
    assert matches(raster(sensor=">"), raster(sensor="anything"))


def test_or_alternatives_on_either_side() -> None:
    assert matches(raster(sensor={"or": ["Sentinel2", "Landsat8"]}), raster(sensor="Landsat8"))
    assert not matches(raster(sensor={"or": ["Sentinel2", "Landsat8"]}), raster(sensor="Pleiades"))
    assert matches(raster(sensor="Pleiades"), raster(sensor={"or": ["SPOT", "Pleiades"]}))
    assert matches(raster(sensor={"or": ["A", "B"]}), raster(sensor={"or": ["C", "B"]}))
    assert not matches(raster(sensor={"or": ["A", "B"]}), raster(sensor={"or": ["C", "D"]}))
    assert matches(raster(bands={"or": [["red", "nir"], ["vv", "vh"]]}), raster(bands=["vv", "vh", "angle"]))


def test_parameter_substitution() -> None:
    required = raster(format="${fmt}")
    assert matches(required, raster(format="COG"), {"fmt": "COG"})
    assert not matches(required, raster(format="GTiff"), {"fmt": "COG"})
    assert matches(required, raster(format="GTiff"), {})  # unset parameter: undeclared
    assert matches(required, raster(format="GTiff"), {"fmt": None})
    out = resolve_output(raster(format="${fmt}", bands=["${band}", "nir"], sensor={"or": ["${s}", "x"]}), [], {"fmt": "COG", "band": "red", "s": "S2"})
    assert out["raster"]["up42_standard"] == {"format": "COG", "bands": ["red", "nir"], "sensor": {"or": ["S2", "x"]}}
    # only a whole "${name}" string is substituted
    assert resolve_output(raster(name="pre-${fmt}"), [], {"fmt": "x"})["raster"]["up42_standard"]["name"] == "pre-${fmt}"


def test_lists_are_sets_that_must_be_offered_whole() -> None:
    assert matches(raster(bands=["red", "nir"]), SCENE_OUT)
    assert matches(raster(bands=["nir", "red"]), SCENE_OUT)  # order does not matter
    assert not matches(raster(bands=["red", "swir"]), SCENE_OUT)
    assert matches(raster(bands="nir"), SCENE_OUT)  # one value is a one-item list
    assert not matches(raster(bands=["red", "nir"]), raster(bands="red"))
    assert matches(raster(bands=["red"]), raster(bands="red"))
    assert matches(raster(bands=[]), raster(bands="red"))


def test_scalar_values_compare_exactly() -> None:
    assert matches(raster(format="GTiff", dtype="uint16"), SCENE_OUT)
    problems = match_problems(raster(format="GTiff", dtype="float32"), {"scene": SCENE_OUT}, {})
    assert problems == ["needs raster.up42_standard.dtype = 'float32' but upstream offers scene: 'uint16'"]
    assert not matches(raster(size=1), raster(size="1"))


def test_group_mismatch() -> None:
    vector_in = {"vector": {"up42_standard": {"format": "GeoJSON"}}}
    problems = match_problems(vector_in, {"scene": SCENE_OUT}, {})
    assert problems == ["step 'scene' produces ['raster'] but this block reads ['vector']"]


def test_custom_section_is_matched_like_up42_standard() -> None:
    assert matches({"raster": {"custom": {"level": "L2A"}}}, {"raster": {"custom": {"level": "L2A"}}})
    assert not matches({"raster": {"custom": {"level": "L2A"}}}, {"raster": {"custom": {"level": "L1C"}}})
    # a key in another section is not the same key
    assert matches({"raster": {"custom": {"level": "L2A"}}}, {"raster": {"up42_standard": {"level": "L1C"}}})


def test_empty_input_capabilities_must_be_first() -> None:
    assert match_problems({}, {}, {}) == []
    assert match_problems({}, {"scene": SCENE_OUT}, {}) == [
        "takes no input (empty input_capabilities), so it must be the first step"
    ]


def test_any_block_may_be_first() -> None:
    assert match_problems(raster(format="GTiff"), {}, {}) == []


def test_empty_output_capabilities_must_be_last() -> None:
    problems = match_problems(raster(format="GTiff"), {"sink": {}}, {})
    assert problems == ["step 'sink' produces no output (empty output_capabilities), so it must be last"]


def test_fan_in_each_key_needs_one_upstream_that_offers_it() -> None:
    ndvi = raster(bands=["ndvi"], format="GTiff")
    required = raster(bands=["ndvi"], format="GTiff")
    assert match_problems(required, {"scene": SCENE_OUT, "ndvi": ndvi}, {}) == []
    vectors = {"vector": {"up42_standard": {"format": "GeoJSON"}}}
    # an upstream step in another group is a mismatch of its own
    problems = match_problems(required, {"ndvi": ndvi, "shapes": vectors}, {})
    assert problems == ["step 'shapes' produces ['vector'] but this block reads ['raster']"]
    problems = match_problems(raster(bands=["swir"]), {"scene": SCENE_OUT, "ndvi": ndvi}, {})
    assert len(problems) == 1 and "scene: ['blue', 'green', 'red', 'nir'], ndvi: ['ndvi']" in problems[0]


def test_every_mismatch_is_listed() -> None:
    problems = match_problems(raster(format="COG", dtype="float32", bands=["swir"]), {"scene": SCENE_OUT}, {})
    assert len(problems) == 3
