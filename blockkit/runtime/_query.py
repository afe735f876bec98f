"""Data-block queries with UP42's rules (ids, bbox, intersects, contains, time, time_series, limit)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from blockkit.contract.errors import InputParametersError, Problem
from blockkit.contract._parameters import geometry_problem, parse_date_range

if TYPE_CHECKING:  # datetime is imported by the parsing, when a query has a time
    from datetime import datetime

QUERY_KEYS = ("ids", "bbox", "intersects", "contains", "time", "time_series", "limit")


@dataclass(frozen=True)
class Query:
    """A validated search query for a data block."""

    ids: list[str] | None = None
    bbox: tuple[float, float, float, float] | None = None
    intersects: dict[str, Any] | None = None
    contains: dict[str, Any] | None = None
    time: str | None = None
    time_series: list[str] | None = None
    limit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def time_range(self) -> tuple[datetime | None, datetime | None] | None:
        """The parsed `time` range, or None."""
        return parse_date_range(self.time) if self.time else None

    def geometry(self) -> dict[str, Any] | None:
        """The area of interest as a GeoJSON geometry (bbox, intersects or contains)."""
        if self.bbox:
            w, s, e, n = self.bbox
            return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
        return self.intersects or self.contains

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Query:
        """Build a query from block parameters, reporting every rule it breaks."""
        problems: list[Problem] = []
        given = [k for k in ("bbox", "intersects", "contains") if params.get(k) is not None]
        if len(given) > 1:
            problems.append(Problem("query", f"give at most one of bbox, intersects, contains (got {', '.join(given)})"))
        bbox = params.get("bbox")
        if bbox is not None:
            if (
                not isinstance(bbox, (list, tuple))
                or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
            ):
                problems.append(Problem("parameter 'bbox'", "must be [west, south, east, north] numbers"))
                bbox = None
            elif not (bbox[0] < bbox[2] and bbox[1] < bbox[3]):
                problems.append(Problem("parameter 'bbox'", f"{list(bbox)}: west < east and south < north are required"))
                bbox = None
            elif not (-180 <= bbox[0] <= 180 and -180 <= bbox[2] <= 180 and -90 <= bbox[1] <= 90 and -90 <= bbox[3] <= 90):
                problems.append(Problem("parameter 'bbox'", f"{list(bbox)} is outside longitude/latitude range"))
                bbox = None
        for key in ("intersects", "contains"):
            if params.get(key) is not None:
                problem = geometry_problem(params[key])
                if problem:
                    problems.append(Problem(f"parameter {key!r}", problem))
        time = params.get("time")
        if time is not None:
            try:
                parse_date_range(str(time))
            except ValueError as exc:
                problems.append(Problem("parameter 'time'", f"{time!r}: {exc}"))
        series = params.get("time_series")
        if series is not None:
            if not isinstance(series, list):
                problems.append(Problem("parameter 'time_series'", "must be a list of date ranges"))
            else:
                for i, item in enumerate(series):
                    try:
                        parse_date_range(str(item))
                    except ValueError as exc:
                        problems.append(Problem(f"parameter 'time_series' item {i}", f"{item!r}: {exc}"))
        if time is not None and series is not None:
            problems.append(Problem("query", "give time or time_series, not both"))
        limit = params.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            problems.append(Problem("parameter 'limit'", f"must be an integer >= 1, not {limit!r}"))
        ids = params.get("ids")
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
            problems.append(Problem("parameter 'ids'", "must be a list of strings"))
        if problems:
            raise InputParametersError.from_problems("invalid query", problems)
        return cls(
            ids=ids,
            bbox=tuple(float(v) for v in bbox) if bbox else None,  # type: ignore[arg-type]
            intersects=params.get("intersects"),
            contains=params.get("contains"),
            time=str(time) if time is not None else None,
            time_series=[str(s) for s in series] if series else None,
            limit=limit,
            extra={k: v for k, v in params.items() if k not in QUERY_KEYS},
        )
