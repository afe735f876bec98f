"""What a run report shows, read from a run folder (every value from the folder is untrusted).

A block decides its feature ids, properties, file names and log lines, so this module reads
them defensively: sizes are capped, files are read only when they are regular files inside
the run folder (or, for a reused step, inside the runs root), and nothing is interpreted:
the page escapes every string (see page.py).
"""

from __future__ import annotations

import base64
import json
import math
import stat
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator
from urllib.parse import quote

from blockkit.contract._datajson import DATA_JSON, DATA_PATH, check_data_path
from blockkit.runner._logfilter import is_error_line
from blockkit.runner._run import PROVENANCE_FILE, RUN_FILE, RunFolder

# Caps that keep a hostile or huge run folder from making a huge (or slow) report.
MAX_FEATURES_PER_STEP = 5_000
MAX_DATA_JSON_BYTES = 64 << 20
MAX_VERTICES_PER_RING = 400
# Geometry the maps hold (every map redraw draws all of it); a ring or part counts one vertex more.
MAX_VERTICES_PER_FEATURE = 4_000  # a feature's footprint
MAX_FOOTPRINT_VERTICES = 200_000  # per step, all its features' footprints
MAX_VECTOR_VERTICES = 200_000  # per step, drawn from GeoJSON output files
MAX_REPORT_VERTICES = 500_000  # footprints and vector files of all steps together
MAX_VECTOR_FILE_BYTES = 16 << 20
MAX_VECTOR_BYTES = 128 << 20  # GeoJSON parsed for one report (each file once, however many features name it)
MAX_PROPERTIES = 12
MAX_TEXT = 300
LOG_TAIL_LINES = 200
LOG_TAIL_BYTES = 64 << 10
MAX_OUTPUT_HASHES = 500
MAX_QUICKLOOK_BYTES = 8 << 20
MAX_QUICKLOOK_PIXELS = 4096 * 4096  # as the PNG or JPEG header declares them: the map draws every quicklook
MAX_QUICKLOOK_SIDE = 16384
MAX_INLINE_IMAGE_BYTES = 64 << 20  # all data-URI images of one report together
IMAGE_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}
VECTOR_SUFFIXES = (".geojson", ".json")
_NUMBERS = (int, float)


@dataclass
class ImageBudget:
    """How images are referenced: relative to the report when possible, else inline (capped)."""

    report_dir: Path
    run_dir: Path
    inline_left: int = MAX_INLINE_IMAGE_BYTES
    skipped: int = 0
    too_large: int = 0  # more pixels than MAX_QUICKLOOK_PIXELS

    def reference(self, path: Path) -> str | None:
        """A URL for the image that needs no request leaving the report's folder, or None."""
        try:
            st = path.lstat()
        except OSError:
            return None
        if not path.is_file() or path.is_symlink() or st.st_size > MAX_QUICKLOOK_BYTES or st.st_size == 0:
            return None
        size = image_size(path)
        if size is None:
            return None  # not a PNG or JPEG whose size can be read
        width, height = size
        if width * height > MAX_QUICKLOOK_PIXELS or max(width, height) > MAX_QUICKLOOK_SIDE:
            self.too_large += 1
            return None
        if self.report_dir == self.run_dir and _inside(path, self.run_dir):
            rel = path.resolve().relative_to(self.run_dir.resolve())
            return "/".join(quote(part, safe="") for part in rel.parts)
        if st.st_size > self.inline_left:
            self.skipped += 1
            return None
        data = path.read_bytes()
        mime = next((m for magic, m in IMAGE_TYPES.items() if data.startswith(magic)), None)
        if mime is None:
            return None
        self.inline_left -= len(data)
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}
_JPEG_MAX_SEGMENTS = 512


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) a PNG or JPEG file declares in its header, or None for anything else."""
    try:
        with path.open("rb") as handle:
            head = handle.read(24)
            if head.startswith(b"\x89PNG\r\n\x1a\n"):
                if len(head) < 24 or head[12:16] != b"IHDR":
                    return None
                width, height = struct.unpack(">II", head[16:24])
                return (width, height) if width and height else None
            if head.startswith(b"\xff\xd8\xff"):
                handle.seek(2)
                return _jpeg_size(handle)
    except OSError:
        return None
    return None


def _jpeg_size(handle: BinaryIO) -> tuple[int, int] | None:
    """The size in a JPEG's frame header (SOFn), walking at most _JPEG_MAX_SEGMENTS segments."""
    for _ in range(_JPEG_MAX_SEGMENTS):
        byte = handle.read(1)
        if byte != b"\xff":
            return None
        while byte == b"\xff":  # fill bytes before a marker
            byte = handle.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        length_bytes = handle.read(2)
        if len(length_bytes) < 2:
            return None
        (length,) = struct.unpack(">H", length_bytes)
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            frame = handle.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return (width, height) if width and height else None
        handle.seek(length - 2, 1)
    return None


def _inside(path: Path, root: Path) -> bool:
    real, base = path.resolve(), root.resolve()
    return real == base or base in real.parents


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """A value as display text, cut to `limit` characters."""
    if value is None:
        return ""
    if isinstance(value, str):
        out = value
    elif type(value) in _NUMBERS:
        out = repr(value)
    else:
        out = json.dumps(value, default=str, ensure_ascii=False)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def number(value: Any) -> float | None:
    """A finite float, or None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        out = float(value)
    except (OverflowError, ValueError):
        return None
    return out if math.isfinite(out) else None


# --- geometry ---------------------------------------------------------------------------------

def _position(value: Any) -> tuple[float, float] | None:
    if type(value) is not list or len(value) < 2:  # noqa: E721 - JSON arrays only, and fast
        return None
    x, y = value[0], value[1]
    if type(x) not in _NUMBERS or type(y) not in _NUMBERS:
        return None
    try:
        x, y = float(x), float(y)
    except OverflowError:
        return None
    # NaN fails both comparisons; infinities fall outside.
    if not (-540.0 <= x <= 540.0 and -90.0 <= y <= 90.0):
        return None
    return x, y


def _ring(coords: Any) -> list[float]:
    """A ring (or line) as a flat [x0, y0, x1, y1, ...] list, thinned to MAX_VERTICES_PER_RING."""
    if not isinstance(coords, list):
        return []
    step = max(1, math.ceil(len(coords) / MAX_VERTICES_PER_RING))
    flat: list[float] = []
    for i in range(0, len(coords), step):
        pos = _position(coords[i])
        if pos is not None:
            flat += [round(pos[0], 6), round(pos[1], 6)]
    return flat


def _parts(geometry: Any, depth: int = 0) -> Iterator[list[float]]:
    """Every ring, line and point of a GeoJSON geometry as flat coordinate lists, lazily.

    An empty list is yielded for each geometry and polygon too, so that a consumer with a
    budget pays for parts that hold no usable vertex (a million empty rings cost as much).
    """
    if not isinstance(geometry, dict) or depth > 4:
        return
    yield []
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Point":
        pos = _position(coords)
        yield [round(pos[0], 6), round(pos[1], 6)] if pos else []
    elif kind in ("MultiPoint", "LineString"):
        yield _ring(coords)
    elif kind in ("Polygon", "MultiLineString"):
        yield from map(_ring, _list(coords))
    elif kind == "MultiPolygon":
        for poly in _list(coords):
            yield []
            yield from map(_ring, _list(poly))
    elif kind == "GeometryCollection":
        for part in _list(geometry.get("geometries"))[:1000]:
            yield from _parts(part, depth + 1)


@dataclass
class Rings:
    """Some geometry as flat coordinate lists, what it cost (vertices, plus one a part) and whether some was left out."""

    rings: list[list[float]] = field(default_factory=list)
    cost: int = 0
    cut: bool = False


def rings(geometry: Any, limit: int = MAX_VERTICES_PER_FEATURE) -> Rings:
    """The rings, lines and points of a GeoJSON geometry, up to `limit` (vertices plus one a part)."""
    out = Rings()
    for ring in _parts(geometry):
        cost = len(ring) // 2 + 1
        if out.cost + cost > limit:
            out.cut = True
            break
        out.cost += cost
        if ring:
            out.rings.append(ring)
    return out


def bbox_of(flat_rings: Iterable[list[float]]) -> list[float] | None:
    """[west, south, east, north] of flat rings, or None when empty."""
    xs: list[float] = []
    ys: list[float] = []
    for ring in flat_rings:
        xs += ring[0::2]
        ys += ring[1::2]
    if not xs:
        return None
    return [min(xs), min(ys), max(xs), max(ys)]


def _feature_bbox(feature: dict[str, Any], geometry_rings: list[list[float]]) -> list[float] | None:
    found = bbox_of(geometry_rings)
    if found is not None:
        return found
    box = feature.get("bbox")
    if isinstance(box, list) and len(box) in (4, 6):
        west, south = _position(box[:2]) or (None, None)
        east, north = _position(box[len(box) // 2: len(box) // 2 + 2]) or (None, None)
        if None not in (west, south, east, north):
            return [west, south, east, north]  # type: ignore[list-item]
    return None


# --- files of a step --------------------------------------------------------------------------

def log_tail(path: Path) -> tuple[list[str], bool]:
    """The last lines of a log file (read from its end, capped), and whether it was cut."""
    try:
        if path.is_symlink() or not path.is_file():
            return [], False
        size = path.stat().st_size
        with path.open("rb") as handle:
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            data = handle.read(LOG_TAIL_BYTES)
    except OSError:
        return [], False
    lines = data.decode("utf-8", errors="replace").splitlines()
    cut = size > LOG_TAIL_BYTES
    if cut and lines:
        lines = lines[1:]  # the first line read from the middle is partial
    if len(lines) > LOG_TAIL_LINES:
        lines, cut = lines[-LOG_TAIL_LINES:], True
    return [text(line, 2000) for line in lines], cut


def error_line_index(lines: list[str], detail: str) -> int | None:
    """Which log line is the step's error: the failure detail, else the last `[..._ERROR]` line."""
    wanted = detail.strip()
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i].strip()
        if wanted and (line == wanted or (len(wanted) > 10 and wanted in line)):
            return i
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        if is_error_line(line):
            return i
    return None


def _read_json_file(path: Path, limit: int) -> Any:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > limit:
            return None
        return json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError, RecursionError):
        return None


def _file_rings(doc: Any) -> Rings:
    """The geometries of a parsed GeoJSON file, up to what one step may draw (MAX_VECTOR_VERTICES)."""
    out = Rings()
    if not isinstance(doc, dict):
        return out
    features = doc.get("features") if doc.get("type") == "FeatureCollection" else [doc]
    for feat in _list(features):
        geometry = feat.get("geometry") if isinstance(feat, dict) and feat.get("type") == "Feature" else feat
        found = rings(geometry, MAX_VECTOR_VERTICES - out.cost)
        out.rings += found.rings
        out.cost += found.cost + 1  # a feature that holds nothing usable costs too
        if found.cut or out.cost >= MAX_VECTOR_VERTICES:
            out.cut = True
            break
    return out


@dataclass
class GeometryBudget:
    """The geometry one report's maps may still hold, and the GeoJSON files it has parsed.

    A data path is parsed at most once a report (files are known by device and inode, so
    other names and hard links of the same file count once), and only MAX_VECTOR_BYTES in all.
    """

    vertices_left: int = MAX_REPORT_VERTICES
    vector_bytes_left: int = MAX_VECTOR_BYTES
    vector_files_skipped: int = 0
    footprints_cut: int = 0
    parsed: dict[tuple[int, int], Rings] = field(default_factory=dict)

    def footprint(self, geometry: Any, step_left: int) -> Rings:
        """A feature's footprint within the feature's, the step's (`step_left`) and the report's budget."""
        found = rings(geometry, min(MAX_VERTICES_PER_FEATURE, step_left, self.vertices_left))
        self.vertices_left -= found.cost
        self.footprints_cut += found.cut
        return found

    def vector_file(self, output_dir: Path, data_path: str) -> tuple[tuple[int, int], Rings] | None:
        """A GeoJSON output file (a vector result) as rings, and which file it is; None when it is not read."""
        if not data_path.lower().endswith(VECTOR_SUFFIXES) or check_data_path(data_path, output_dir) is not None:
            return None
        path = output_dir / data_path
        try:
            st = path.lstat()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_VECTOR_FILE_BYTES:
            return None
        key = (st.st_dev, st.st_ino)
        if key not in self.parsed:
            if st.st_size > self.vector_bytes_left:
                self.vector_files_skipped += 1
                self.parsed[key] = Rings(cut=True)
            else:
                self.vector_bytes_left -= st.st_size
                self.parsed[key] = _file_rings(_read_json_file(path, MAX_VECTOR_FILE_BYTES))
        return key, self.parsed[key]


def _key_properties(props: dict[str, Any]) -> dict[str, str]:
    shown: dict[str, str] = {}
    for key, value in props.items():
        if key == DATA_PATH or isinstance(value, (dict, list)):
            continue
        shown[text(key, 80)] = text(value, 120)
        if len(shown) >= MAX_PROPERTIES:
            break
    return shown


@dataclass
class StepFiles:
    """The folders a step's report section reads (a reused step's quicklooks live in its source run)."""

    output_dir: Path
    quicklook_dir: Path


def step_files(folder: RunFolder, name: str, cached_from: str | None) -> StepFiles:
    """Output and quicklook folders of a step; a reused step's quicklooks come from its source."""
    output_dir = folder.output_dir(name)
    quicklooks = folder.quicklook_dir(name)
    if cached_from and not quicklooks.is_dir():
        root = folder.path.parent
        source = (root / cached_from).parent / "quicklooks"
        if check_data_path(cached_from, None) is None and _inside(source, root) and source.is_dir():
            quicklooks = source
    return StepFiles(output_dir, quicklooks)


def _features(output_dir: Path) -> tuple[list[dict[str, Any]], int, str]:
    """The step's output features (capped), how many there are, and why none could be read."""
    path = output_dir / DATA_JSON
    try:
        if path.is_symlink():
            return [], 0, "data.json is a symlink; not read"
        size = path.stat().st_size
    except OSError:
        return [], 0, ""
    if size > MAX_DATA_JSON_BYTES:
        return [], 0, f"data.json is {size >> 20} MB; too large to show"
    doc = _read_json_file(path, MAX_DATA_JSON_BYTES)
    if not isinstance(doc, dict) or not isinstance(doc.get("features"), list):
        return [], 0, "data.json is not a readable FeatureCollection"
    features = [f for f in doc["features"] if isinstance(f, dict)]
    return features[:MAX_FEATURES_PER_STEP], len(features), ""


def step_section(folder: RunFolder, name: str, record: dict[str, Any], images: ImageBudget,
                 geometry: GeometryBudget | None = None) -> dict[str, Any]:
    """Everything the report shows about one step (`geometry`: the report's budget, shared by its steps)."""
    geometry = geometry if geometry is not None else GeometryBudget()
    cached_from = record.get("cached_from") if isinstance(record.get("cached_from"), str) else None
    files = step_files(folder, name, cached_from)
    raw_features, total, problem = _features(files.output_dir)
    features: list[dict[str, Any]] = []
    by_id: dict[str, list[float] | None] = {}
    vectors: list[list[float]] = []
    footprints_left, vectors_left, vectors_cut, footprints_cut = MAX_FOOTPRINT_VERTICES, MAX_VECTOR_VERTICES, False, 0
    vector_files: set[tuple[int, int]] = set()
    for index, feature in enumerate(raw_features):
        props = _dict(feature.get("properties"))
        footprint = geometry.footprint(feature.get("geometry"), footprints_left)
        footprints_left -= footprint.cost
        footprints_cut += footprint.cut
        geometry_rings = footprint.rings
        box = _feature_bbox(feature, geometry_rings)
        fid = text(feature.get("id") if feature.get("id") is not None else f"#{index}", 200)
        data_path = props.get(DATA_PATH)
        features.append({
            "id": fid,
            "data_path": text(data_path, 300),
            "props": _key_properties(props),
            "bbox": box,
            "rings": geometry_rings,
        })
        by_id.setdefault(fid, box)
        found = geometry.vector_file(files.output_dir, data_path) if isinstance(data_path, str) else None
        if found is not None and found[0] not in vector_files:  # a file named by many features is drawn once
            vector_files.add(found[0])
            vectors_cut = vectors_cut or found[1].cut
            for ring in found[1].rings:
                cost = len(ring) // 2 + 1
                if cost > min(vectors_left, geometry.vertices_left):
                    vectors_cut = True
                    break
                vectors_left -= cost
                geometry.vertices_left -= cost
                vectors.append(ring)
    quicklooks = []
    if files.quicklook_dir.is_dir() and not files.quicklook_dir.is_symlink():
        for path in sorted(files.quicklook_dir.iterdir())[:MAX_FEATURES_PER_STEP]:
            if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
                continue
            src = images.reference(path)
            if src is not None:
                quicklooks.append({"name": text(path.name, 200), "feature": text(path.stem, 200),
                                   "src": src, "bbox": by_id.get(path.stem)})
    log_lines, log_cut = log_tail(folder.log_path(name))
    detail = text(record.get("detail"), 2000)
    outputs = _dict(record.get("outputs"))
    block = _dict(record.get("block"))
    params = _dict(record.get("params"))
    upstream = _list(record.get("upstream"))
    return {
        "name": text(name, 200),
        "status": text(record.get("status") or "pending", 40),
        "exit_code": number(record.get("exit_code")),
        "exit_name": text(record.get("exit_name"), 60),
        "started": number(record.get("started")),
        "ended": number(record.get("ended")),
        "cached_from": text(cached_from, 400),
        "cache_key": text(record.get("cache_key"), 100),
        "block": {k: text(block.get(k), 400) for k in ("name", "version", "path", "source_sha256")},
        "engine": text(record.get("engine"), 40),
        "image": text(record.get("image"), 300),
        "image_id": text(record.get("image_id"), 100),
        "params": {text(k, 80): text(v, 300) for k, v in list(params.items())[:100]},
        "upstream": [text(u, 200) for u in upstream[:100]],
        "features_out": number(record.get("features_out")),
        "features_total": total,
        "features_problem": problem,
        "features": features,
        "vectors": vectors,
        "vectors_cut": vectors_cut,
        "footprints_cut": footprints_cut,
        "quicklooks": quicklooks,
        "outputs": [[text(k, 300), text(v, 80)] for k, v in list(outputs.items())[:MAX_OUTPUT_HASHES]],
        "outputs_total": len(outputs),
        "detail": detail,
        "log": log_lines,
        "log_cut": log_cut,
        "error_line": error_line_index(log_lines, detail) if record.get("status") == "failed" else None,
        "progress": _progress(log_lines) if record.get("status") == "running" else None,
    }


def _progress(lines: list[str]) -> list[int] | None:
    from blockkit.contract._progress import parse_progress

    for line in reversed(lines):
        found = parse_progress(line)
        if found is not None:
            return [found[0], found[1]]
    return None


@dataclass
class ReportData:
    """The report's content: the run, its steps, and notes about what was left out."""

    run: dict[str, Any]
    steps: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON the page script reads."""
        return {"run": self.run, "steps": self.steps, "notes": self.notes}


def _dict(value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one (run folders are untrusted)."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    """`value` when it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else []


def read_report(run_dir: Path, report_dir: Path | None = None) -> ReportData:
    """Read a run folder into report data (a damaged run.json is a WorkflowError)."""
    folder = RunFolder(run_dir)
    run = folder.read_json(RUN_FILE)
    provenance = _read_json_file(run_dir / PROVENANCE_FILE, 16 << 20)
    provenance = provenance if isinstance(provenance, dict) else {}
    records = _dict(run.get("steps"))
    images = ImageBudget(report_dir or run_dir, run_dir)
    geometry = GeometryBudget()
    steps = [step_section(folder, str(name), rec if isinstance(rec, dict) else {}, images, geometry)
             for name, rec in list(records.items())[:1000]]
    workflow = _dict(provenance.get("workflow"))
    ended = [s["ended"] for s in steps if s["ended"] is not None]
    summary = {
        "run_id": text(run.get("run_id") or run_dir.name, 200),
        "workflow": text(run.get("workflow"), 200),
        "workflow_path": text(run.get("workflow_path"), 400),
        "workflow_sha256": text(workflow.get("sha256"), 100),
        "status": text(run.get("status"), 40),
        "engine": text(run.get("engine"), 40),
        "started": number(run.get("started")),
        "updated": number(run.get("updated")),
        "ended": number(provenance.get("ended")) or (max(ended) if ended else None),
        "blockkit_version": text(provenance.get("blockkit_version"), 40),
        "generated": time.time(),
        "folder": text(str(run_dir), 400),
    }
    notes = []
    if images.skipped:
        notes.append(f"{images.skipped} quicklook(s) left out: more than {MAX_INLINE_IMAGE_BYTES >> 20} MB of images "
                     "to inline; open report.html inside the run folder to see them all")
    if images.too_large:
        notes.append(f"{images.too_large} quicklook(s) left out: more than {MAX_QUICKLOOK_PIXELS:,} pixels "
                     f"or {MAX_QUICKLOOK_SIDE:,} pixels a side")
    if geometry.footprints_cut:
        notes.append(f"{geometry.footprints_cut} footprint(s) cut or left out on the map: at most "
                     f"{MAX_VERTICES_PER_FEATURE:,} vertices a feature, {MAX_FOOTPRINT_VERTICES:,} a step and "
                     f"{MAX_REPORT_VERTICES:,} in the report")
    if geometry.vector_files_skipped:
        notes.append(f"{geometry.vector_files_skipped} vector file(s) not drawn: more than "
                     f"{MAX_VECTOR_BYTES >> 20} MB of GeoJSON to read for one report")
    if len(records) > 1000:
        notes.append(f"only the first 1000 of {len(records)} steps are shown")
    return ReportData(summary, steps, notes)

