"""data.json: load, validate and write GeoJSON FeatureCollections that link files via `up42.data_path`."""

from __future__ import annotations

import json
import math
import os
import posixpath
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import repeat
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from blockkit.contract.errors import NoInputError, Problem, WrongInputError

DATA_JSON = "data.json"
DATA_PATH = "up42.data_path"
# Properties never inherited by derived features (SPEC §2, propagation).
RESERVED_PREFIXES = ("up42.", "custom.")
# A data.json this large is refused before parsing: it is surely not metadata.
MAX_DATA_JSON_BYTES = 1 << 30
#: Objects and arrays nested deeper than this in a feature's members (its properties, assets,
#: a GeometryCollection's members; a geometry's coordinates are bounded by its type) are
#: refused: whatever reads the feature later (schema checks, copies, writers) stays bounded.
MAX_NESTING = 64
_MAX_PROBLEMS = 50


@dataclass
class FeatureCollection:
    """A GeoJSON FeatureCollection; features are plain GeoJSON dicts."""

    features: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # foreign members (bbox, ...), kept on round trip

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.features)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]

    def append(self, feature: dict[str, Any]) -> None:
        """Add one feature."""
        self.features.append(feature)

    def to_dict(self) -> dict[str, Any]:
        """The GeoJSON dict of this collection."""
        return {"type": "FeatureCollection", **self.extra, "features": self.features}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureCollection:
        """Wrap a (validated) GeoJSON FeatureCollection dict."""
        extra = {k: v for k, v in data.items() if k not in ("type", "features")}
        return cls(list(data.get("features") or []), extra)

    @classmethod
    def coerce(cls, value: FeatureCollection | dict[str, Any] | Iterable[dict[str, Any]] | None) -> FeatureCollection:
        """Accept a FeatureCollection, a GeoJSON dict or a list of features."""
        if value is None:
            return cls()
        if isinstance(value, FeatureCollection):
            return value
        if isinstance(value, dict):
            if value.get("type") == "Feature":
                return cls([value])
            if value.get("type") == "FeatureCollection":
                return cls.from_dict(value)
            # Any other dict would silently become an empty collection.
            raise TypeError(f"a dict with type {value.get('type')!r} is not a FeatureCollection or a Feature")
        if isinstance(value, (str, bytes)):
            raise TypeError("text is not a FeatureCollection")
        return cls(list(value))


def data_path_of(feature: dict[str, Any]) -> str | None:
    """The feature's `up42.data_path`, or None."""
    props = feature.get("properties") or {}
    return props.get(DATA_PATH)


def feature_label(index: int, feature: Any) -> str:
    """How a feature is named in messages: its index and id when it has one."""
    fid = feature.get("id") if isinstance(feature, dict) else None
    return f"feature {index}" + (f" (id {fid!r})" if fid is not None else "")


# --- schema ---------------------------------------------------------------------------------

def schema_path(name: str) -> Path:
    """Path of a JSON Schema shipped with blockkit."""
    return Path(__file__).resolve().parent.parent / "schemas" / name


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    """A shipped JSON Schema as a dict."""
    schema: dict[str, Any] = json.loads(schema_path(name).read_text(encoding="utf-8"))
    return schema


def feature_schema() -> dict[str, Any]:
    """The schema of one feature: data.schema.json's `feature` definition, with the definitions it refers to."""
    schema = load_schema("data.schema.json")
    return {"definitions": schema["definitions"], **schema["definitions"]["feature"]}


@lru_cache(maxsize=None)
def _feature_validator() -> Callable[[Any], Any]:
    from blockkit.contract._schema_checks import schema_check

    return schema_check("feature", feature_schema())


def _schema_problems(where: str, instance: Any, definition: str) -> list[Problem]:
    """Every schema error of one instance, for the slow path after the fast check failed."""
    import jsonschema

    schema = load_schema("data.schema.json")
    sub = {"definitions": schema["definitions"], **schema["definitions"][definition]}
    validator = jsonschema.Draft7Validator(sub)
    problems = []
    for err in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        loc = "/".join(str(p) for p in err.absolute_path)
        problems.append(Problem(where, f"{loc + ': ' if loc else ''}{_short(err)}"))
    return problems or [Problem(where, "does not match the GeoJSON Feature schema")]


def _short(err: Any) -> str:
    if err.validator == "oneOf" and err.context:
        # Name the most specific reason instead of "is not valid under any of the given schemas".
        # Deepest in the instance first, then deepest in the schema: a geometry missing its
        # coordinates must not be reported as "is not of type 'null'".
        best = max(err.context, key=lambda e: (len(e.absolute_path), len(e.relative_schema_path)))
        return _short(best)
    msg = str(err.message)
    return msg if len(msg) < 200 else msg[:197] + "..."


# --- geometry rules the schema cannot express -----------------------------------------------

def _ring_problems(rings: Any) -> str | None:
    for ring in rings:
        if ring[0] != ring[-1]:
            return "a polygon ring is not closed (first and last positions differ)"
    return None


def _geometry_problem(geom: dict[str, Any]) -> str | None:
    kind = geom["type"]
    if kind == "Polygon":
        return _ring_problems(geom["coordinates"])
    if kind == "MultiPolygon":
        for poly in geom["coordinates"]:
            problem = _ring_problems(poly)
            if problem:
                return problem
    elif kind == "GeometryCollection":
        for sub in geom["geometries"]:
            problem = _geometry_problem(sub)
            if problem:
                return problem
    return None


# --- bbox --------------------------------------------------------------------------------------

#: How far (degrees) a geometry may stick out of its feature's bbox: rounding, not another place.
BBOX_TOLERANCE_DEG = 1e-5


def _positions(coords: Any) -> Iterator[Any]:
    # Lists from JSON, or tuples from shapely's mapping() before the feature is written.
    if isinstance(coords, (list, tuple)) and coords and isinstance(coords[0], (int, float)):
        yield coords
        return
    if isinstance(coords, (list, tuple)):
        for part in coords:
            yield from _positions(part)


def geometry_bounds(geom: dict[str, Any] | None) -> list[float] | None:
    """[west, south, east, north] of a GeoJSON geometry, or None when it has no positions."""
    if not geom:
        return None
    parts = geom.get("geometries") if geom.get("type") == "GeometryCollection" else [geom]
    lons: list[float] = []
    lats: list[float] = []
    for part in parts or ():
        nested = geometry_bounds(part) if part.get("type") == "GeometryCollection" else None
        if nested:
            lons += [nested[0], nested[2]]
            lats += [nested[1], nested[3]]
            continue
        for position in _positions(part.get("coordinates")):
            lons.append(float(position[0]))
            lats.append(float(position[1]))
    if not lons:
        return None
    return [min(lons), min(lats), max(lons), max(lats)]


def _bbox_problem(bbox: Any, geom: dict[str, Any] | None) -> str | None:
    """What is wrong with a feature's bbox: its shape, its order, or a geometry outside it."""
    if not isinstance(bbox, list) or len(bbox) not in (4, 6) or not all(is_finite_number(v) for v in bbox):
        return "bbox must be 4 numbers [west, south, east, north] (or 6 with heights)"
    half = len(bbox) // 2
    west, south, east, north = bbox[0], bbox[1], bbox[half], bbox[half + 1]
    if south > north:
        return f"bbox south {south} is greater than north {north}"
    if half == 3 and bbox[2] > bbox[5]:
        return f"bbox lowest height {bbox[2]} is greater than highest {bbox[5]}"
    bounds = geometry_bounds(geom)
    if bounds is None:
        return None
    tol = BBOX_TOLERANCE_DEG
    inside_lat = bounds[1] >= south - tol and bounds[3] <= north + tol
    # west > east is a bbox across the antimeridian (RFC 7946 5.2): only latitudes are comparable.
    inside_lon = west > east or (bounds[0] >= west - tol and bounds[2] <= east + tol)
    if not (inside_lat and inside_lon):
        shown = ", ".join(f"{v:.6g}" for v in bounds)
        return f"bbox {bbox} does not contain the geometry (its bounds are [{shown}])"
    return None


# --- data_path rules --------------------------------------------------------------------------

def check_data_path(value: Any, base_dir: Path | None, *, must_exist: bool = True) -> str | None:
    """Why a data_path is unsafe or dangling, or None when it is fine."""
    if not isinstance(value, str) or not value:
        return f"up42.data_path {value!r} must be a non-empty string"
    if "\x00" in value or "\\" in value:
        return f"up42.data_path {value!r} must be a POSIX path (no NUL or backslash)"
    drive = len(value) > 1 and value[0].isalpha() and value[1] == ":" and (len(value) == 2 or value[2] == "/")
    if value.startswith("/") or drive:
        return f"up42.data_path {value!r} is absolute; it must be relative to the folder holding data.json"
    parts = value.split("/")
    if ".." in parts:
        return f"up42.data_path {value!r} leaves its folder (through '..')"
    if posixpath.normpath(value) in (".", DATA_JSON):
        return f"up42.data_path {value!r} names the folder holding data.json or data.json itself, not a feature's data"
    if base_dir is None:
        return None
    target = base_dir / posixpath.normpath(value)
    # Resolve symlinks only when one is on the way: a plain stat is much cheaper.
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        if not must_exist:
            return None
        return f"up42.data_path {value!r} does not exist"
    except OSError as exc:
        return f"up42.data_path {value!r} cannot be read: {exc.strerror}"
    if _has_symlink(base_dir, parts, st):
        real = target.resolve()
        root = base_dir.resolve()
        if real != root and root not in real.parents:
            return f"up42.data_path {value!r} is a symlink that leaves the directory"
        if must_exist and not real.exists():
            return f"up42.data_path {value!r} is a dangling symlink"
    return None


def _has_symlink(base_dir: Path, parts: list[str], leaf: os.stat_result) -> bool:
    import stat

    if stat.S_ISLNK(leaf.st_mode):
        return True
    current = base_dir
    for part in parts[:-1]:
        if part in ("", "."):
            continue
        current = current / part
        if current.is_symlink():
            return True
    return False


# --- validation -----------------------------------------------------------------------------

def validate_feature_collection(
    data: Any, base_dir: Path | None = None, *, check_files: bool = True
) -> list[Problem]:
    """Every problem of a parsed data.json (schema, geometry, data_path), up to a bound."""
    if not isinstance(data, dict):
        return [Problem("data.json", f"must be a JSON object (a FeatureCollection), not {type(data).__name__}")]
    if data.get("type") != "FeatureCollection":
        return [Problem("data.json", f"'type' must be 'FeatureCollection', not {data.get('type')!r}")]
    features = data.get("features")
    if not isinstance(features, list):
        return [Problem("data.json", "'features' must be a list")]
    nested = _nesting_problem([v for k, v in data.items() if k != "features"], 2)  # the collection's own members
    if nested:
        return [Problem("data.json", nested)]
    validate = _feature_validator()
    problems: list[Problem] = []
    seen_ids: dict[Any, int] = {}
    for index, feature in enumerate(features):
        if len(problems) >= _MAX_PROBLEMS:
            problems.append(Problem("data.json", f"more problems not listed (stopped after {_MAX_PROBLEMS})"))
            break
        nested = _nesting_problem([feature], 3, geometry=True) if isinstance(feature, dict) else None
        if nested:
            problems.append(Problem(feature_label(index, feature), nested))
            continue
        try:
            validate(feature)
        except Exception:  # noqa: BLE001 - fastjsonschema raises JsonSchemaValueException
            problems.extend(_schema_problems(feature_label(index, feature), feature, "feature"))
            continue
        label = None
        geom = feature["geometry"]
        if geom is not None:
            geom_problem = _geometry_problem(geom)
            if geom_problem:
                label = feature_label(index, feature)
                problems.append(Problem(label, f"geometry: {geom_problem}"))
        if "bbox" in feature:
            bbox_problem = _bbox_problem(feature["bbox"], geom)
            if bbox_problem:
                label = label or feature_label(index, feature)
                problems.append(Problem(label, bbox_problem))
        fid = feature.get("id")
        if fid is not None:
            if fid in seen_ids:
                problems.append(Problem(feature_label(index, feature), f"duplicate id (also feature {seen_ids[fid]})"))
            seen_ids[fid] = index
        props = feature["properties"]
        if props and DATA_PATH in props:
            path_problem = check_data_path(props[DATA_PATH], base_dir if check_files else None)
            if path_problem:
                problems.append(Problem(label or feature_label(index, feature), path_problem))
        href_problem = _asset_href_problem(feature)
        if href_problem:
            problems.append(Problem(label or feature_label(index, feature), href_problem))
    return problems


def _nesting_problem(values: list[Any], depth: int, *, geometry: bool = False) -> str | None:
    """Why `values` (at level `depth`: the collection is 1, a feature 3) nest too deep, iteratively (see MAX_NESTING).

    With `geometry`, `values` are features: their `geometry` is walked as geometries (through a
    GeometryCollection's members, not into coordinates), the rest of their members fully. The
    walk keeps one iterator per open level, so its memory grows with the depth, not the breadth.
    """
    stack: list[Iterator[tuple[Any, int, bool]]]  # (member, its level, is it a geometry) of each open level
    if geometry:
        stack = [((v, depth + 1, k == "geometry") for f in values for k, v in f.items())]
    else:
        stack = [((v, depth, False) for v in values)]
    while stack:
        for value, level, is_geometry in stack[-1]:
            if type(value) is dict:
                if level > MAX_NESTING:
                    return f"nested deeper than {MAX_NESTING} levels of objects and arrays"
                stack.append(_members(value, level, is_geometry))
                break
            if type(value) is list:
                if level > MAX_NESTING:
                    return f"nested deeper than {MAX_NESTING} levels of objects and arrays"
                stack.append(zip(value, repeat(level + 1), repeat(False)))
                break
        else:
            stack.pop()
    return None


def _members(value: dict[str, Any], level: int, is_geometry: bool) -> Iterator[tuple[Any, int, bool]]:
    """The members of an object at `level` to walk for nesting (a geometry's coordinates are not)."""
    for key, member in value.items():
        if is_geometry and key == "coordinates":
            continue  # the schema bounds them by the geometry's type
        if is_geometry and key == "geometries" and type(member) is list:
            yield from zip(member, repeat(level + 2), repeat(True))  # member geometries
        else:
            yield member, level + 1, False


def _asset_href_problem(feature: dict[str, Any]) -> str | None:
    """Why a local STAC asset href of a feature is unsafe (absolute, `..`, NUL, backslash), or None."""
    assets = feature.get("assets")
    if not isinstance(assets, dict):
        return None
    for key, asset in assets.items():
        href = asset.get("href") if isinstance(asset, dict) else None
        if isinstance(href, str) and "://" not in href:
            problem = check_data_path(href, None)
            if problem:
                return f"asset {key!r}: {problem.replace('up42.data_path', 'href')}"
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a float, refusing one too large for a float (`1e400` would read as infinity)."""
    value = float(text)
    if value - value != 0:  # inf - inf is nan
        raise ValueError(f"number {text[:40]} is out of range (only finite numbers are valid)")
    return value


def _float_sized_int(text: str) -> int:
    """A JSON integer, refusing one beyond a float's range (every reader converts numbers to floats somewhere)."""
    value = int(text)
    if len(text) > 300:  # a float reaches 1.8e308: only a long literal can be out of range
        try:
            float(value)
        except OverflowError:
            raise ValueError(f"number {text[:40]}... is out of range (only finite numbers are valid)") from None
    return value


def parse_data_json(raw: bytes, where: str = "data.json") -> Any:
    """Parse data.json bytes strictly (UTF-8, no NaN/Infinity), raising WrongInputError."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WrongInputError(f"{where} is not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_float_sized_int)
    except (ValueError, RecursionError) as exc:
        raise WrongInputError(f"{where} is not valid JSON: {exc}") from None


def load_data_json(
    directory: Path, *, required: bool = True, check_files: bool = True
) -> FeatureCollection:
    """Read and validate `<directory>/data.json`; raise NoInputError/WrongInputError with every problem."""
    path = Path(directory) / DATA_JSON
    if path.is_symlink():
        raise WrongInputError(f"{path} is a symlink; data.json must be a regular file")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if required:
            raise NoInputError(f"no input: {path} does not exist") from None
        return FeatureCollection()
    if not path.is_file():
        raise WrongInputError(f"{path} is not a regular file")
    if size > MAX_DATA_JSON_BYTES:
        raise WrongInputError(f"{path} is {size} bytes; data.json is limited to {MAX_DATA_JSON_BYTES} bytes")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WrongInputError(f"{path} cannot be read: {exc.strerror}") from None
    data = parse_data_json(raw, str(path))
    problems = validate_feature_collection(data, Path(directory), check_files=check_files)
    if problems:
        raise WrongInputError.from_problems(f"invalid {path}", problems)
    fc = FeatureCollection.from_dict(data)
    if required and not fc.features:
        raise NoInputError(f"no input: {path} has no features")
    return fc


def dumps(fc: FeatureCollection | dict[str, Any]) -> str:
    """Serialise a FeatureCollection to JSON text (finite numbers only)."""
    data = fc.to_dict() if isinstance(fc, FeatureCollection) else fc
    try:
        return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (ValueError, TypeError) as exc:  # NaN/Infinity, or a value JSON has no type for (numpy.float32, ...)
        raise WrongInputError(f"cannot write data.json: {exc}") from None


def write_atomic(path: Path, text: str | Iterable[str], *, durable: bool = True) -> Path:
    """Write text (or its pieces, in order) to path atomically (temp file in the same folder, fsync, rename).

    `durable=False` skips the fsync: for scratch files that a crash makes worthless anyway
    (the runner makes them again), never for a result.
    """
    path = Path(path)
    # A fresh random name, created exclusively and never through a symlink someone planted there.
    tmp = path.with_name(f".{path.name}.{os.urandom(8).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            if isinstance(text, str):
                fh.write(text)
            else:
                fh.writelines(text)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()
    return path


def write_data_json(directory: Path, fc: FeatureCollection | dict[str, Any], *, durable: bool = True) -> Path:
    """Write `<directory>/data.json` atomically; a failure never leaves a partial file.

    `durable=False` skips the fsync, for scratch copies a crash makes worthless anyway (the
    runner's per-feature split); never for a result.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return write_atomic(directory / DATA_JSON, dumps(fc), durable=durable)


def collection_text(features: Iterable[dict[str, Any]]) -> Iterator[str]:
    """The text `dumps` gives a FeatureCollection of `features`, a feature at a time (never all in memory)."""
    yield '{"type":"FeatureCollection","features":['
    for n, feature in enumerate(features):
        yield "," + dumps(feature) if n else dumps(feature)
    yield "]}"


def is_finite_number(value: Any) -> bool:
    """True for an int or a finite float (not bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
