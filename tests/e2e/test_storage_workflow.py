"""A workflow from a STAC item over HTTP to S3, with keystore keys: results published as a STAC catalog, no secret leaks."""

from __future__ import annotations

import hashlib
import json
import posixpath
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from blockkit.runner._session import RunRequest, run_request
from blockkit.storage._keystore import Keystore, S3KeyConfig

MANIFEST = {
    "_up42_specification_version": 2,
    "name": "staged-ndvi",
    "type": "processing",
    "display_name": "NDVI of staged Sentinel-2 items",
    "description": "NDVI from the B04/B08 files of each staged STAC item folder; prints its key to its log (leak test).",
    "parameters": {},
    "machine": {"type": "small"},
    "input_capabilities": {"raster": {"up42_standard": {}}},
    "output_capabilities": {"raster": {"up42_standard": {"format": "GTiff", "dtype": "float32", "bands": ["ndvi"]}}},
}

RUN_PY = '''
"""staged-ndvi: reads each staged item folder's B04/B08, writes <id>_ndvi.tif; prints its key (a leak test)."""

import hashlib
import os
import sys

import numpy as np
import rasterio

import blockkit
from blockkit import BlockContext, FeatureCollection


@blockkit.processing_block
def staged_ndvi(fc: FeatureCollection, ctx: BlockContext) -> FeatureCollection:
    secret = os.environ.get("BLOCKKIT_KEY_LEAKY_SECRET_KEY", "")
    print("my secret is", secret)
    print("my secret on stderr:", secret, file=sys.stderr)
    print("secret sha256", hashlib.sha256(secret.encode()).hexdigest())
    out = []
    for feature in fc:
        folder = ctx.input_path(feature).parent  # data_path is the item's primary asset, beside its other bands
        with rasterio.open(folder / "B04.tif") as red_src, rasterio.open(folder / "B08.tif") as nir_src:
            red, nir = red_src.read(1).astype("float32"), nir_src.read(1).astype("float32")
            profile = dict(red_src.profile, dtype="float32", count=1, nodata=float("nan"))
        with np.errstate(divide="ignore", invalid="ignore"):
            ndvi = np.where(red + nir != 0, (nir - red) / (red + nir), np.float32("nan")).astype("float32")
        name = f"{feature['id']}_ndvi.tif"
        with rasterio.open(ctx.output_path(name), "w", **profile) as dst:
            dst.write(ndvi, 1)
        props = {k: v for k, v in feature["properties"].items() if not k.startswith("up42.")}
        props.update({"up42.data_path": name, "ndvi:mean": float(np.nanmean(ndvi))})
        out.append({"type": "Feature", "id": f"{feature['id']}_ndvi", "geometry": feature.get("geometry"),
                    "properties": props})
    return FeatureCollection(out)


if __name__ == "__main__":
    staged_ndvi.run()
'''


def make_block(folder: Path) -> Path:
    """The staged-ndvi block written into the test's folder."""
    (folder / "src").mkdir(parents=True)
    (folder / "UP42Manifest.json").write_text(json.dumps(MANIFEST, indent=2))
    (folder / "src" / "run.py").write_text(RUN_PY)
    return folder


@pytest.fixture()
def setup(tmp_path: Path, seaweed: Any, stac_server: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A keystore (output key for seaweed, a `leaky` key for the step), a bucket and the workflow file."""
    _server, site = stac_server
    passphrase = "pass-" + secrets.token_hex(8)
    store = Keystore(tmp_path / "keystore", passphrase)
    leaky_secret = "LEAKY-" + secrets.token_urlsafe(24)
    store.add("results", S3KeyConfig(seaweed.access_key, seaweed.secret_key, seaweed.endpoint, seaweed.region))
    store.add("leaky", S3KeyConfig("AKLEAKY" + secrets.token_hex(4).upper(), leaky_secret, seaweed.endpoint, "eu-west-1"))
    monkeypatch.setenv("BLOCKKIT_KEYSTORE", str(tmp_path / "keystore"))
    monkeypatch.setenv("BLOCKKIT_KEYSTORE_PASSPHRASE", passphrase)
    bucket = seaweed.make_bucket("e2e-" + secrets.token_hex(4))
    block = make_block(tmp_path / "staged-ndvi")
    workflow = tmp_path / "stac-to-s3.yaml"
    workflow.write_text(
        "name: stac-to-s3\n"
        f"input: stac+{site.item_url}\n"
        f"output: s3://{bucket}/results/\n"
        "keys: {output: results}\n"
        "steps:\n"
        f"  ndvi: {{block: {block}, keys: [leaky]}}\n"
    )
    return {"workflow": workflow, "bucket": bucket, "site": site, "runs": tmp_path / "runs",
            "secrets": [leaky_secret, seaweed.secret_key, passphrase], "leaky_secret": leaky_secret}


def s3_json(client: Any, uri: str) -> dict[str, Any]:
    parts = urlsplit(uri)
    return json.loads(client.get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))["Body"].read())


def resolve(base: str, href: str) -> str:
    """An href relative to an s3:// document, made absolute."""
    if "://" in href:
        return href
    parts = urlsplit(base)
    return f"s3://{parts.netloc}{posixpath.normpath(posixpath.join(posixpath.dirname(parts.path), href))}"


def check_published(client: Any, catalog_uri: str, bucket: str, item_ids: list[str]) -> None:
    """The catalog on S3 reads with pystac and every item and asset href resolves to an object."""
    import pystac

    assert catalog_uri.startswith(f"s3://{bucket}/results/") and catalog_uri.endswith("catalog.json")
    catalog = pystac.Catalog.from_dict(s3_json(client, catalog_uri))
    item_links = [link for link in catalog.links if link.rel == "item"]
    assert len(item_links) == len(item_ids)
    for link in item_links:
        item_uri = resolve(catalog_uri, link.href if isinstance(link.href, str) else link.get_href())
        item = pystac.Item.from_dict(s3_json(client, item_uri))
        assert item.id in {f"{i}_ndvi" for i in item_ids}
        assert -1.0 <= item.properties["ndvi:mean"] <= 1.0
        assert item.assets, item.to_dict()
        for asset in item.assets.values():
            href = resolve(item_uri, asset.href)
            assert href.startswith(f"s3://{bucket}/results/"), href
            parts = urlsplit(href)
            head = client.head_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))
            assert head["ContentLength"] > 0


def check_no_leaks(runs: Path, secret_values: list[str], captured: list[str]) -> None:
    """No secret in any file under the runs folder (logs, provenance, run.json, data.json...) nor in runner output."""
    files = [p for p in runs.rglob("*") if p.is_file()]
    assert any(p.name == "provenance.json" for p in files) and any(p.suffix == ".log" for p in files)
    for path in files:
        data = path.read_bytes()
        for value in secret_values:
            assert value.encode() not in data, f"secret leaked into {path}"
    text = "\n".join(captured)
    for value in secret_values:
        assert value not in text, "secret leaked into the runner's output"


def run_and_check(setup: dict[str, Any], seaweed: Any, engine: str) -> None:
    captured: list[str] = []
    summary = run_request(RunRequest(
        target=setup["workflow"], engine=engine, runs_dir=setup["runs"], use_cache=False,
        on_log_line=lambda step, line: captured.append(f"{step}: {line}"), on_message=captured.append,
    ))
    assert summary["engine"] == engine
    [catalog_uri] = summary["outputs"]
    run_dir = Path(summary["run_dir"])
    # the step read the staged data and really had its key (its hash is printed, the value redacted)
    log = (run_dir / "logs" / "ndvi.log").read_text()
    assert hashlib.sha256(setup["leaky_secret"].encode()).hexdigest() in log
    assert "my secret is" in log
    provenance = json.loads((run_dir / "provenance.json").read_text())
    [step] = provenance["steps"]
    assert step["status"] == "ok" and step["features_out"] == 1
    out = json.loads((Path(summary["steps"]["ndvi"]["output_dir"]) / "data.json").read_text())
    assert out["features"][0]["id"] == f"{setup['site'].item_ids[0]}_ndvi"
    check_published(seaweed.client(), catalog_uri, setup["bucket"], setup["site"].item_ids[:1])
    check_no_leaks(setup["runs"], setup["secrets"], captured)


@pytest.mark.slow
def test_stac_to_s3_process_engine(setup: dict[str, Any], seaweed: Any) -> None:
    run_and_check(setup, seaweed, "process")


@pytest.mark.docker
def test_stac_to_s3_docker_engine(setup: dict[str, Any], seaweed: Any, docker_client: Any, base_image: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOCKKIT_BASE_IMAGE", base_image)
    run_and_check(setup, seaweed, "docker")


def test_a_full_output_target_is_refused_before_any_step_runs(setup: dict[str, Any], seaweed: Any) -> None:
    """Stage-out never overwrites: a re-run to the same S3 prefix stops before running, not after."""
    from blockkit.storage._errors import TargetNotEmpty

    client = seaweed.client()
    client.put_object(Bucket=setup["bucket"], Key="results/earlier.txt", Body=b"an earlier result")
    with pytest.raises(TargetNotEmpty, match="results"):
        run_request(RunRequest(target=setup["workflow"], engine="process", runs_dir=setup["runs"], use_cache=False))
    assert not list(setup["runs"].glob("*/steps/ndvi/output")), "a step ran although its output had nowhere to go"
    body = client.get_object(Bucket=setup["bucket"], Key="results/earlier.txt")["Body"].read()
    assert body == b"an earlier result"
