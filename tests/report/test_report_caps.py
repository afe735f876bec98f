"""Report caps against a block that writes too much geometry or too many pixels: bounded work, bounded page."""

from __future__ import annotations

import base64
import json
import struct
import sys
import time
import warnings
import zlib
from pathlib import Path

import pytest

from blockkit.report._model import (MAX_FOOTPRINT_VERTICES, MAX_VERTICES_PER_FEATURE, GeometryBudget, ImageBudget,
                                    image_size, read_report, step_section)
from blockkit.runner._run import RunFolder
from tests.report.chromium import Chromium
from tests.report.conftest import cli
from tests.runner.blocks import write_block

pytestmark = pytest.mark.slow  # each test makes a real run through the command

READY = 'document.getElementById("app").dataset.ready === "1"'


def _run(tmp_path: Path, source: str) -> Path:
    block = write_block(tmp_path / "blocks", "heavy", kind="data", source=source, params={})
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"name: heavy\nsteps:\n  s1: {{block: {block}}}\n")
    done = cli("run", wf, "--engine", "process", "--runs-dir", tmp_path / "runs", "-q")
    assert done.returncode == 0, done.stderr
    [run] = [p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file()]
    return run


# --- F3: a GeoJSON data file named by many features ---------------------------------------------

VECTOR_SOURCE = '''
import json, os
import blockkit
from blockkit import FeatureCollection

@blockkit.data_block
def heavy(query, ctx):
    # 4 MB of JSON without a single vertex, and a small file of two polygons with a second name (a hard link).
    ctx.output_path("pad.geojson").write_text('{"type": "FeatureCollection", "features": [], "pad": ['
                                              + ",".join(["1"] * 2_000_000) + "]}")
    ring = [[13.0, 52.0], [13.1, 52.0], [13.1, 52.1], [13.0, 52.0]]
    shapes = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}},
        {"type": "Feature", "properties": {}, "geometry": {"type": "LineString", "coordinates": ring[:2]}}]}
    ctx.output_path("shapes.geojson").write_text(json.dumps(shapes))
    os.link(ctx.output_path("shapes.geojson"), ctx.output_path("same-shapes.geojson"))
    names = ["pad.geojson", "shapes.geojson", "same-shapes.geojson"]
    return FeatureCollection([ctx.new_feature(geometry=None, data_path=names[i % 3], id="f%d" % i) for i in range(300)])

if __name__ == "__main__":
    heavy.run()
'''

_opened: list[str] = []
_counting = [False]


def _audit(event: str, args: tuple) -> None:
    if _counting[0] and event == "open" and isinstance(args[0], (str, Path)) and str(args[0]).endswith(".geojson"):
        _opened.append(Path(args[0]).name)


sys.addaudithook(_audit)


def test_a_geojson_file_named_by_many_features_is_read_once_a_report_and_drawn_once(tmp_path: Path) -> None:
    run = _run(tmp_path, VECTOR_SOURCE)
    _opened.clear()
    _counting[0] = True
    try:
        started = time.monotonic()
        step = {s["name"]: s for s in read_report(run).steps}["s1"]
        took = time.monotonic() - started
    finally:
        _counting[0] = False
    # 100 features name the 4 MB file, 200 the two names of one small file: two files read, once each.
    assert sorted(_opened) in (["pad.geojson", "shapes.geojson"], ["pad.geojson", "same-shapes.geojson"]), _opened
    assert step["vectors"] == [[13.0, 52.0, 13.1, 52.0, 13.1, 52.1, 13.0, 52.0], [13.0, 52.0, 13.1, 52.0]]
    assert len(step["features"]) == 300 and not step["vectors_cut"]
    assert took < 10, took  # parsed once per feature, the 4 MB file took about 8 s


def test_geojson_files_beyond_the_reports_byte_budget_are_not_read(tmp_path: Path) -> None:
    run = _run(tmp_path, VECTOR_SOURCE)
    folder = RunFolder(run)
    budget = GeometryBudget(vector_bytes_left=1 << 20)  # the pad file (4 MB) is over it, the shapes are not
    _opened.clear()
    _counting[0] = True
    try:
        step = step_section(folder, "s1", {}, ImageBudget(run, run), budget)
    finally:
        _counting[0] = False
    assert "pad.geojson" not in _opened and budget.vector_files_skipped == 1
    assert len(step["vectors"]) == 2 and step["vectors_cut"]


# --- F4: rings per feature ----------------------------------------------------------------------

RINGS_SOURCE = '''
import json, os

out = os.environ["BLOCKKIT_OUTPUT_DIR"]
square = lambda i: [[[13 + (i % 100) * 0.001, 52.0], [13.001 + (i % 100) * 0.001, 52.0],
                     [13.001 + (i % 100) * 0.001, 52.001], [13 + (i % 100) * 0.001, 52.0]]]
# One feature of 200,000 polygons, then ordinary features that must still get their footprints.
features = [{"type": "Feature", "id": "many", "properties": {},
             "geometry": {"type": "MultiPolygon", "coordinates": [square(i) for i in range(200_000)]}}]
features += [{"type": "Feature", "id": "f%d" % i, "properties": {},
              "geometry": {"type": "Polygon", "coordinates": square(i)}} for i in range(20)]
with open(os.path.join(out, "data.json"), "w") as handle:
    json.dump({"type": "FeatureCollection", "features": features}, handle)
'''


def _vertices(step: dict) -> int:
    return sum(len(r) // 2 for f in step["features"] for r in f["rings"])


def test_a_feature_of_many_rings_is_cut_to_the_feature_budget_and_the_report_says_so(tmp_path: Path,
                                                                                   browser: Chromium) -> None:
    run = _run(tmp_path, RINGS_SOURCE)
    data = read_report(run)
    [step] = data.steps
    many = step["features"][0]
    assert 0 < sum(len(r) // 2 + 1 for r in many["rings"]) <= MAX_VERTICES_PER_FEATURE
    assert all(len(f["rings"]) == 1 for f in step["features"][1:])  # the others are drawn whole
    assert _vertices(step) <= MAX_FOOTPRINT_VERTICES and step["footprints_cut"] == 1
    assert any("1 footprint(s) cut or left out" in note for note in data.notes), data.notes
    report = run / "report.html"
    assert report.stat().st_size < 1_000_000  # 200,000 rings made about 7 MB
    browser.open(report.as_uri())
    browser.wait_for(READY)
    browser.evaluate("blockkitReport.select('s1')")
    assert browser.evaluate("+document.getElementById('map').dataset.footprints") == 21
    assert "21 footprint(s) (blue), 1 cut to fit" in browser.evaluate("document.querySelector('.legend').textContent")
    assert "footprint(s) cut or left out" in browser.evaluate("document.body.textContent")
    assert browser.record.errors() == []


# --- F5: quicklook pixels -----------------------------------------------------------------------

def _png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG (a 15000 x 15000 one is 30 kB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (b"\x00" + bytes((width + 7) // 8)) * height
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def _jpeg(path: Path, size: int) -> bytes:
    """A real JPEG written by GDAL (JFIF), size x size pixels."""
    import numpy as np
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="JPEG", width=size, height=size, count=1, dtype="uint8") as dst:
            dst.write(np.full((1, size, size), 200, dtype="uint8"))
    return path.read_bytes()


def _jpeg_header_only(width: int, height: int) -> bytes:
    """A JPEG that declares width x height: JFIF APP0, a comment, then the frame header."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    comment = b"\xff\xfe" + struct.pack(">H", 7) + b"hello"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + comment + sof + b"\xff\xd9"


QUICKLOOK_SOURCE = '''
import base64, json, os

out, ql = os.environ["BLOCKKIT_OUTPUT_DIR"], os.environ["BLOCKKIT_QUICKLOOK_DIR"]
os.makedirs(ql, exist_ok=True)
files = json.loads(%r)
features = []
for i, (name, data) in enumerate(sorted(files.items())):
    with open(os.path.join(ql, name), "wb") as handle:
        handle.write(base64.b64decode(data))
    x = 13 + i * 0.01
    features.append({"type": "Feature", "id": name.rsplit(".", 1)[0], "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[x, 52.0], [x + 0.008, 52.0], [x + 0.008, 52.008], [x, 52.0]]]}})
with open(os.path.join(out, "data.json"), "w") as handle:
    json.dump({"type": "FeatureCollection", "features": features}, handle)
'''


def test_image_size_reads_png_and_jpeg_headers(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png(300, 7))
    _jpeg(tmp_path / "b.jpg", 33)
    (tmp_path / "c.jpg").write_bytes(_jpeg_header_only(15000, 12000))
    (tmp_path / "d.png").write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    (tmp_path / "e.jpg").write_bytes(b"\xff\xd8\xff" + b"\xfe\x00\x04ab" * 10_000)  # comments only, no frame
    assert image_size(tmp_path / "a.png") == (300, 7)
    assert image_size(tmp_path / "b.jpg") == (33, 33)
    assert image_size(tmp_path / "c.jpg") == (15000, 12000)
    assert image_size(tmp_path / "d.png") is None and image_size(tmp_path / "e.jpg") is None


def test_quicklooks_over_the_pixel_bound_are_left_out_with_a_note(tmp_path: Path, browser: Chromium) -> None:
    files = {
        "small.png": _png(64, 64),
        "small-jpeg.jpg": _jpeg(tmp_path / "small.jpg", 32),
        "bomb.png": _png(15000, 15000),  # 30 kB, 225 million pixels once decoded
        "bomb-jpeg.jpg": _jpeg_header_only(20000, 9000),
        "not-an-image.png": b"<svg xmlns='http://www.w3.org/2000/svg'><script>1</script></svg>",
    }
    encoded = json.dumps({name: base64.b64encode(data).decode("ascii") for name, data in files.items()})
    run = _run(tmp_path, QUICKLOOK_SOURCE % encoded)
    data = read_report(run)
    [step] = data.steps
    assert sorted(q["name"] for q in step["quicklooks"]) == ["small-jpeg.jpg", "small.png"]
    assert any(note == "2 quicklook(s) left out: more than 16,777,216 pixels or 16,384 pixels a side" for note in data.notes), data.notes
    browser.open((run / "report.html").as_uri())
    browser.wait_for(READY)
    browser.evaluate("blockkitReport.select('s1')")
    decoded = browser.evaluate("Promise.all(Array.from(document.images).map(i => i.decode().then(() => i.naturalWidth)))")
    assert sorted(decoded) == [32, 64]
    assert browser.wait_for("+document.getElementById('map').dataset.quicklooksPlaced === 2")
    assert "2 quicklook(s) left out" in browser.evaluate("document.body.textContent")
    assert not any("bomb" in url for url in browser.record.requests), browser.record.requests
    assert browser.record.errors() == []
