"""Data-block queries: UP42's rules, every broken rule listed."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from blockkit.contract.errors import InputParametersError
from blockkit.runtime._query import Query

SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}


def test_valid_query_and_extras() -> None:
    q = Query.from_params({"bbox": [13, 52, 14, 53], "time": "2024-01-01T00:00:00Z/..", "limit": 5, "ids": ["a"], "cloud": 20})
    assert q.bbox == (13.0, 52.0, 14.0, 53.0) and q.limit == 5 and q.ids == ["a"] and q.extra == {"cloud": 20}
    assert q.time_range == (datetime(2024, 1, 1, tzinfo=timezone.utc), None)
    assert q.geometry()["coordinates"][0][0] == [13.0, 52.0]
    assert Query.from_params({"intersects": SQUARE}).geometry() == SQUARE
    assert Query.from_params({"contains": SQUARE}).geometry() == SQUARE
    assert Query.from_params({}).geometry() is None
    assert Query.from_params({"time_series": ["2024-01-01/2024-02-01", "2024-03-01/2024-04-01"]}).time_series


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"bbox": [0, 0, 1, 1], "intersects": SQUARE}, "give at most one of bbox, intersects, contains (got bbox, intersects)"),
        ({"intersects": SQUARE, "contains": SQUARE}, "at most one of"),
        ({"limit": 0}, "must be an integer >= 1, not 0"),
        ({"limit": -3}, "must be an integer >= 1"),
        ({"limit": 1.5}, "must be an integer >= 1"),
        ({"limit": True}, "must be an integer >= 1"),
        ({"bbox": [0, 0, 1]}, "must be [west, south, east, north] numbers"),
        ({"bbox": "0,0,1,1"}, "must be [west, south, east, north]"),
        ({"bbox": [0, 0, True, 1]}, "must be [west, south, east, north]"),
        ({"bbox": [1, 0, 0, 1]}, "west < east and south < north"),
        ({"bbox": [0, 0, 200, 1]}, "outside longitude/latitude range"),
        ({"intersects": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}}, "parameter 'intersects': is not a valid geometry"),
        ({"time": "2024-13-01"}, "parameter 'time'"),
        ({"time": "2024-02-01T00:00:00Z/2024-01-01T00:00:00Z"}, "start is after end"),
        ({"time_series": "2024"}, "must be a list of date ranges"),
        ({"time_series": ["2024-01-01", "never"]}, "parameter 'time_series' item 1"),
        ({"time": "2024-01-01", "time_series": ["2024-01-01"]}, "give time or time_series, not both"),
        ({"ids": "a"}, "must be a list of strings"),
        ({"ids": [1]}, "must be a list of strings"),
    ],
)
def test_rules(params: dict[str, Any], expected: str) -> None:
    with pytest.raises(InputParametersError) as info:
        Query.from_params(params)
    assert info.value.exit_code == 2
    assert expected in info.value.headline() and "\n" not in info.value.headline()


def test_every_broken_rule_is_listed() -> None:
    with pytest.raises(InputParametersError) as info:
        Query.from_params({"bbox": [1, 0, 0, 1], "limit": 0, "time": "x", "ids": 3})
    assert len(info.value.problems) == 4 and "(and 3 more)" in info.value.headline()
