"""The AWS CLI, s3fs/fsspec and GDAL (through rasterio) against the gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blockkit.gateway import client_env
from tests.gateway.conftest import Served

AWS = Path(sys.executable).parent / "aws"


def aws(served: Served, *args: str) -> str:
    env = {**os.environ, **client_env(served.endpoint), "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    proc = subprocess.run([str(AWS), "--endpoint-url", served.endpoint, *args], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_aws_cli_ls_cp_recursive_and_sync(served: Served, tmp_path_factory: pytest.TempPathFactory) -> None:
    listing = aws(served, "s3", "ls", "s3://input/scenes/", "--recursive")
    assert "scenes/2024/a.tif" in listing and "scenes/meta.json" in listing
    assert "input" in aws(served, "s3", "ls")
    copy = tmp_path_factory.mktemp("copy")
    aws(served, "s3", "cp", "--recursive", "s3://input/", str(copy))
    assert sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file()) == sorted(
        p.relative_to(served.input) for p in served.input.rglob("*") if p.is_file()
    )
    aws(served, "s3", "cp", "--recursive", str(copy / "scenes"), "s3://out/scenes")
    assert (served.output / "scenes" / "2024" / "b.tif").read_bytes() == b"B" * 2000
    aws(served, "s3", "sync", "s3://input/many", "s3://out/many")
    assert len(list((served.output / "many").iterdir())) == 25
    (copy / "many" / "f000.txt").write_text("changed!")
    out = aws(served, "s3", "sync", str(copy / "many"), "s3://out/many")
    assert "f000.txt" in out and "f001.txt" not in out  # only the changed file is sent again
    assert (served.output / "many" / "f000.txt").read_text() == "changed!"
    aws(served, "s3", "rm", "--recursive", "s3://out/many")
    assert not (served.output / "many").exists()


def test_s3fs_reads_writes_and_lists(served: Served) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(key="k", secret="s", client_kwargs={"endpoint_url": served.endpoint, "region_name": "us-east-1"}, use_listings_cache=False)
    assert sorted(fs.ls("input/scenes")) == ["input/scenes/2024", "input/scenes/meta.json"]
    assert fs.info("input/big.bin")["size"] == 3 * 1024 * 1024
    assert fs.isdir("input/scenes/2024")
    with fs.open("input/big.bin", "rb", block_size=64 * 1024) as fh:
        fh.seek(1000)
        assert fh.read(10) == (served.input / "big.bin").read_bytes()[1000:1010]
    with fs.open("out/from-s3fs/result.json", "w") as fh:
        json.dump({"ok": True}, fh)
    assert json.loads((served.output / "from-s3fs" / "result.json").read_text()) == {"ok": True}
    assert fs.cat("out/from-s3fs/result.json") == b'{"ok": true}'
    fs.rm("out/from-s3fs", recursive=True)
    assert list(served.output.iterdir()) == []
    assert sorted(fs.glob("input/scenes/2024/*.tif")) == ["input/scenes/2024/a.tif", "input/scenes/2024/b.tif"]


def test_fsspec_picks_up_the_sidecar_environment(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    import fsspec

    for name, value in client_env(served.endpoint).items():
        monkeypatch.setenv(name, value)
    import fsspec.config

    monkeypatch.setattr(fsspec.config, "conf", {})
    fsspec.config.set_conf_env(fsspec.config.conf)
    with fsspec.open("s3://input/data.json", "rb", skip_instance_cache=True) as fh:
        assert b"FeatureCollection" in fh.read()


@pytest.fixture
def cog(served: Served) -> Path:
    """A 2048x2048 tiled, deflate-compressed Cloud-Optimized GeoTIFF with overviews (~16 MB)."""
    import numpy as np
    import rasterio
    from affine import Affine

    path = served.input / "scenes" / "cog.tif"
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, size=(2048, 2048), dtype="uint8")
    profile = {"driver": "COG", "width": 2048, "height": 2048, "count": 1, "dtype": "uint8", "crs": "EPSG:32633",
               "transform": Affine(10, 0, 500000, 0, -10, 5000000), "blocksize": 256, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def test_gdal_reads_one_window_of_a_cog_with_range_requests(served: Served, cog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rasterio
    from rasterio.windows import Window

    for name, value in client_env(served.endpoint).items():
        monkeypatch.setenv(name, value)  # rasterio.Env refuses AWS_* options; GDAL reads them from the environment
    env = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "CPL_VSIL_CURL_CHUNK_SIZE": "16384",
        "GDAL_HTTP_MAX_RETRY": "0",
        "VSI_CACHE": "FALSE",
    }
    before = served.gateway.counters.bytes_out
    with rasterio.Env(**env):
        with rasterio.open("/vsis3/input/scenes/cog.tif") as src:
            assert (src.width, src.height, src.crs.to_epsg()) == (2048, 2048, 32633)
            window = src.read(1, window=Window(1024, 1024, 64, 64))
    with rasterio.open(cog) as local:
        assert (window == local.read(1, window=Window(1024, 1024, 64, 64))).all()
    transferred = served.gateway.counters.bytes_out - before
    size = cog.stat().st_size
    assert transferred < size / 20, f"read {transferred} bytes of a {size}-byte file"
    time.sleep(0.1)
    records = [json.loads(line) for line in served.access_log.read_text().splitlines()]
    gets = [r for r in records if r["path"].endswith("cog.tif") and r["method"] == "GET"]
    assert gets and all(r["status"] == 206 and r["range"] for r in gets)


def test_rasterio_s3_url_through_sidecar_env(served: Served, cog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rasterio

    for name, value in client_env(served.endpoint).items():
        monkeypatch.setenv(name, value)
    with rasterio.open("s3://input/scenes/cog.tif") as src:
        assert src.overviews(1)
        assert src.read(1, out_shape=(64, 64)).shape == (64, 64)
