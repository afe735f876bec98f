"""A Sentinel-2-L2A-like item (13 per-band COGs) and a multi-band item, served over HTTP, staged in, NDVI'd by
the example block, staged out to SeaweedFS and WsgiDAV, staged back and compared; the example workflow
examples/workflows/stac-s2-ndvi-s3.yaml run on the process engine (and Docker when available)."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml

from blockkit.storage._keystore import Keystore, S3KeyConfig, WebDavKeyConfig
from blockkit.storage._stagein import stage_in
from blockkit.storage._stageout import stage_out
from blockkit.testing import run_block
from tests.servers import StacHttpServer
from tests.storage.s2like import write_site

REPO = Path(__file__).resolve().parents[2]
NDVI = REPO / "examples" / "blocks" / "ndvi"
WORKFLOW = REPO / "examples" / "workflows" / "stac-s2-ndvi-s3.yaml"


@pytest.fixture(scope="module")
def s2_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StacHttpServer, dict[str, str]]]:
    root = tmp_path_factory.mktemp("s2www")
    with StacHttpServer(root) as server:
        yield server, write_site(root, server.url)


def _check_ndvi(path: Path) -> None:
    with rasterio.open(path) as src:
        ndvi = src.read(1)
        assert (src.width, src.height) == (60, 60) and src.crs.to_epsg() == 32633
    assert np.isnan(ndvi[:4, :4]).all()
    assert np.allclose(ndvi[10:, 20:], 0.5) and np.allclose(ndvi[10:, 5:14], 0.0)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_ndvi_on_per_band_and_multiband_items_and_round_trips(
    s2_site: Any, tmp_path: Path, seaweed: Any, dav_server: Any
) -> None:
    _server, site = s2_site
    results = {}
    for kind in ("s2", "multiband"):
        staged = tmp_path / f"{kind}-in"
        fc = stage_in(site[kind], staged, progress=False)
        [feature] = fc.features
        assert Path(staged / feature["properties"]["up42.data_path"]).is_file()
        if kind == "s2":
            assert len([a for a in feature["assets"].values() if "eo:bands" in a]) == 13
            # the primary asset: the first data raster in the item (the rule of blockkit.stac.primary_asset)
            assert feature["properties"]["up42.data_path"] == f"{site['s2_id']}/B01.tif"
        result = run_block(NDVI, staged, tmp_path / f"{kind}-out", {})
        assert result.returncode == 0, result.stderr
        [out] = json.loads((tmp_path / f"{kind}-out" / "data.json").read_text())["features"]
        assert out["properties"]["ndvi:bands"] == ["red", "nir"]
        _check_ndvi(tmp_path / f"{kind}-out" / out["properties"]["up42.data_path"])
        results[kind] = tmp_path / f"{kind}-out" / out["properties"]["up42.data_path"]
    # the same pixels from both layouts
    with rasterio.open(results["s2"]) as a, rasterio.open(results["multiband"]) as b:
        assert np.array_equal(a.read(1), b.read(1), equal_nan=True)

    # stage-out to S3 and WebDAV, stage back from the printed URI: the same bytes
    ks = Keystore(tmp_path / "ks")
    ks.add("s3", S3KeyConfig(seaweed.access_key, seaweed.secret_key, seaweed.endpoint, seaweed.region))
    ks.add("dav", WebDavKeyConfig(dav_server.endpoint, dav_server.username, dav_server.password))
    bucket = seaweed.make_bucket("s2nd-" + secrets.token_hex(3))
    out_dir = tmp_path / "s2-out"
    name = results["s2"].name
    for key, target in (("s3", f"s3://{bucket}/ndvi/run-1/"),
                        ("dav", f"webdav://127.0.0.1:{dav_server.port}/dav/s2-ndvi-{secrets.token_hex(3)}/")):
        printed = stage_out(out_dir, target, keystore=ks, key=key, progress=False)
        back = tmp_path / f"back-{key}"
        fc = stage_in(printed, back, keystore=ks, key=key, progress=False)
        [feature] = fc.features
        assert _sha(back / feature["properties"]["up42.data_path"]) == _sha(out_dir / name)


@pytest.mark.slow
def test_stage_in_collection_of_per_band_item(s2_site: Any, tmp_path: Path) -> None:
    _server, site = s2_site
    fc = stage_in(site["collection"], tmp_path / "col", progress=False)
    [feature] = fc.features
    staged = tmp_path / "col" / site["s2_id"]
    assert sorted(p.name for p in staged.glob("B*.tif")) == sorted(f"B{b}.tif" for b in
                                                                    ("01", "02", "03", "04", "05", "06", "07", "08",
                                                                     "8A", "09", "10", "11", "12"))
    assert (staged / "thumbnail.png").is_file() and feature["assets"]["thumbnail"]["roles"] == ["thumbnail"]


def _workflow(tmp_path: Path, site: dict[str, str], output: str, filename: str = "stac-s2-ndvi-s3.yaml") -> Path:
    """The example workflow reading the local S2 site, writing to `output`, with the example's NDVI block."""
    doc = yaml.safe_load(WORKFLOW.read_text())
    doc["input"] = "stac+" + site["s2"]
    doc["output"] = output
    doc["steps"]["ndvi"]["block"] = str(NDVI)
    path = tmp_path / filename
    path.write_text(yaml.safe_dump(doc))
    return path


def _run_workflow(tmp_path: Path, site: dict[str, str], seaweed: Any, engine: str,
                  monkeypatch: pytest.MonkeyPatch) -> None:
    from blockkit.runner._session import RunRequest, run_request

    store = Keystore(tmp_path / "keystore")
    store.add("results", S3KeyConfig(seaweed.access_key, seaweed.secret_key, seaweed.endpoint, seaweed.region))
    monkeypatch.setenv("BLOCKKIT_KEYSTORE", str(tmp_path / "keystore"))
    monkeypatch.delenv("BLOCKKIT_KEYSTORE_PASSPHRASE", raising=False)
    bucket = seaweed.make_bucket("s2wf-" + secrets.token_hex(3))
    summary = run_request(RunRequest(target=_workflow(tmp_path, site, f"s3://{bucket}/ndvi/s2-run-1/"), engine=engine,
                                     runs_dir=tmp_path / "runs", use_cache=False))
    [catalog] = summary["outputs"]
    assert catalog == f"s3://{bucket}/ndvi/s2-run-1/catalog.json"
    back = stage_in(catalog, tmp_path / "back", keystore=store, key="results", progress=False)
    [feature] = back.features
    _check_ndvi(tmp_path / "back" / feature["properties"]["up42.data_path"])


@pytest.mark.slow
def test_example_workflow_process_engine(s2_site: Any, tmp_path: Path, seaweed: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _run_workflow(tmp_path, s2_site[1], seaweed, "process", monkeypatch)


@pytest.mark.slow
def test_example_workflow_to_webdav(s2_site: Any, tmp_path: Path, dav_server: Any,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The same workflow with its output on WsgiDAV: published, staged back from the printed URI, compared."""
    from blockkit.runner._session import RunRequest, run_request

    site = s2_site[1]
    store = Keystore(tmp_path / "keystore")
    store.add("results", WebDavKeyConfig(dav_server.endpoint, dav_server.username, dav_server.password))
    monkeypatch.setenv("BLOCKKIT_KEYSTORE", str(tmp_path / "keystore"))
    monkeypatch.delenv("BLOCKKIT_KEYSTORE_PASSPHRASE", raising=False)
    path = _workflow(tmp_path, site, f"webdav://127.0.0.1:{dav_server.port}/dav/s2wf-{secrets.token_hex(3)}/", "wf.yaml")
    summary = run_request(RunRequest(target=path, engine="process", runs_dir=tmp_path / "runs", use_cache=False))
    [catalog] = summary["outputs"]
    back = stage_in(catalog, tmp_path / "back", keystore=store, key="results", progress=False)
    [feature] = back.features
    _check_ndvi(tmp_path / "back" / feature["properties"]["up42.data_path"])
    out_dir = Path(summary["steps"]["ndvi"]["output_dir"])
    name = Path(feature["properties"]["up42.data_path"]).name
    assert _sha(tmp_path / "back" / feature["properties"]["up42.data_path"]) == _sha(out_dir / name)


@pytest.mark.docker
@pytest.mark.slow
def test_example_workflow_docker_engine(s2_site: Any, tmp_path: Path, seaweed: Any, docker_client: Any,
                                        base_image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOCKKIT_BASE_IMAGE", base_image)
    _run_workflow(tmp_path, s2_site[1], seaweed, "docker", monkeypatch)
