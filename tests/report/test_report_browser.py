"""The run report in a real headless Chromium: loads offline, no console error, maps and quicklooks show.

Screenshots are kept under the test's tmp dir (and copied to $BLOCKKIT_TEST_ARTIFACTS when set).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.report.chromium import Chromium
from tests.report.conftest import cli, keep_artifact
from tests.report.hostile import EVIL_ID, EVIL_PROP, hostile_workflow

pytestmark = pytest.mark.slow

READY = 'document.getElementById("app").dataset.ready === "1"'
MAP_STATE = """(() => { const m = document.getElementById("map"); const imgs = Array.from(document.images);
  return {step: m.dataset.step, footprints: +m.dataset.footprints, placed: +(m.dataset.quicklooksPlaced || 0),
          images: imgs.map(i => ({complete: i.complete, width: i.naturalWidth}))}; })()"""
WAIT_IMAGES = "Promise.all(Array.from(document.images).map(i => i.decode().then(() => true, () => false)))"


def _open(browser: Chromium, report: Path) -> None:
    browser.open(report.as_uri())
    browser.wait_for(READY)


def _only_local_requests(browser: Chromium, folder: Path) -> None:
    for url in browser.record.requests:
        assert url.startswith(folder.as_uri() + "/") or url.startswith("data:"), url
    assert not browser.record.failed_requests


def _features_with_geometry(run: Path, step: str) -> int:
    doc = json.loads((run / "steps" / step / "output" / "data.json").read_text())
    return sum(1 for f in doc["features"] if f.get("geometry"))


def test_demo_report_shows_each_steps_footprints_and_quicklooks(demo_run: Path, browser: Chromium, tmp_path: Path) -> None:
    _open(browser, demo_run / "report.html")
    assert browser.evaluate("blockkitReport.steps()") == ["scene", "ndvi", "mask", "polygons"]
    for step in ("scene", "ndvi", "mask", "polygons"):
        browser.evaluate(f"blockkitReport.select({json.dumps(step)})")
        assert all(browser.evaluate(WAIT_IMAGES)), step
        state = browser.wait_for(f"(() => {{ const s = {MAP_STATE}; return s.placed >= 1 && s; }})()")
        assert state["step"] == step
        assert state["footprints"] == _features_with_geometry(demo_run, step) >= 1
        assert state["images"] and all(i["complete"] and i["width"] > 0 for i in state["images"])  # decoded
        keep_artifact(browser.screenshot(tmp_path / f"demo-report-{step}.png"))
    assert browser.evaluate("+document.getElementById('map').dataset.vectors") > 10  # the GeoJSON polygons are drawn
    # Coordinates and the feature under the pointer (the scene is near Berlin, 52.5 N 13.4 E).
    browser.evaluate("document.getElementById('map').scrollIntoView()")
    x, y = browser.evaluate("(() => { const r = document.getElementById('map').getBoundingClientRect(); "
                            "return [r.left + r.width / 2, r.top + r.height / 2]; })()")
    browser.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
    readout = browser.evaluate("document.querySelector('.readout').textContent")
    found = re.match(r"(-?[\d.]+)°, (-?[\d.]+)°", readout)
    assert found is not None, readout
    lat, lon = float(found.group(1)), float(found.group(2))
    assert 52.4 < lat < 52.6 and 13.3 < lon < 13.5, readout
    assert json.loads((demo_run / "steps/polygons/output/data.json").read_text())["features"][0]["id"] in readout
    # All steps on one map: the scene, NDVI, mask and polygon quicklooks and every footprint.
    browser.evaluate("blockkitReport.overview()")
    total = sum(_features_with_geometry(demo_run, s) for s in ("scene", "ndvi", "mask", "polygons"))
    state = browser.wait_for("(() => { const m = document.getElementById('map'); "
                             "return +m.dataset.quicklooksPlaced === 4 && {footprints: +m.dataset.footprints}; })()")
    assert state["footprints"] == total
    browser.evaluate("document.querySelector('#layers input[data-layer=mask]').click()")
    assert browser.evaluate("+document.getElementById('map').dataset.quicklooksPlaced") == 3
    keep_artifact(browser.screenshot(tmp_path / "demo-report-overview.png"))
    assert browser.record.errors() == [] and browser.record.dialogs == []
    _only_local_requests(browser, demo_run)
    assert (tmp_path / "demo-report-polygons.png").stat().st_size > 10_000


def test_failed_run_report_opens_on_the_failed_step_with_its_error_line(tmp_path: Path, browser: Chromium) -> None:
    wf = hostile_workflow(tmp_path, fail=True)
    done = cli("run", wf, "--engine", "process", "--runs-dir", tmp_path / "runs", "-q")
    assert done.returncode == 1
    [run] = [p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file()]
    _open(browser, run / "report.html")
    assert browser.evaluate("document.getElementById('app').dataset.selected") == "up"
    assert "RuntimeError: boom" in browser.evaluate("document.getElementById('step-error').textContent")
    highlighted = browser.evaluate("Array.from(document.querySelectorAll('#log span.err')).map(s => s.textContent)")
    assert len(highlighted) == 1 and "RuntimeError: boom" in highlighted[0]
    graph = browser.evaluate("Array.from(document.querySelectorAll('#graph g.node')).map(g => g.textContent)")
    assert any("failed" in text for text in graph) and any("ok" in text for text in graph)
    keep_artifact(browser.screenshot(tmp_path / "failed-report.png"))
    # The hostile step: its strings are text on the page, nothing ran, nothing was fetched.
    browser.evaluate("blockkitReport.select('evil')")
    table = browser.evaluate("document.getElementById('features').textContent")
    assert EVIL_ID in table and EVIL_PROP in table
    assert browser.evaluate("document.querySelectorAll('#features img, #log img, #features script').length") == 0
    assert browser.evaluate("+document.getElementById('map').dataset.footprints") == 3
    assert browser.record.dialogs == [] and browser.record.errors() == []
    _only_local_requests(browser, run)


def test_report_written_elsewhere_has_everything_inline(demo_run: Path, browser: Chromium, tmp_path: Path) -> None:
    target = tmp_path / "copy" / "demo.html"
    target.parent.mkdir()
    done = cli("runs", "report", demo_run.name, "--runs-dir", demo_run.parent, "-o", target)
    assert done.returncode == 0, done.stderr
    _open(browser, target)
    browser.evaluate("blockkitReport.select('scene')")
    assert all(browser.evaluate(WAIT_IMAGES))
    assert browser.evaluate("Array.from(document.images).every(i => i.src.startsWith('data:image/png') && i.naturalWidth > 0)")
    assert browser.record.requests[0] == target.as_uri()
    assert all(url.startswith("data:") for url in browser.record.requests[1:])
    assert browser.record.errors() == []
