"""Storage benchmarks: S3 stage-in vs `aws s3 cp --recursive`, parallel vs sequential STAC asset download,
a 13-band per-band Sentinel-2-like item from an emulated remote server vs a sequential loop, and NDVI on
per-band COGs (band_stack VRT) vs on one stacked file.

Run: python benchmarks/bench_storage.py [--objects 20 --object-mb 50 --assets 10 --asset-mb 20]
Starts its own SeaweedFS and HTTP server on 127.0.0.1; everything lives in a temp folder removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blockkit.storage._keystore import Keystore, S3KeyConfig  # noqa: E402
from blockkit.storage._stagein import stage_in  # noqa: E402
from tests.servers import SeaweedS3, StacHttpServer  # noqa: E402
from tests.storage.s2like import band_values, s2_l2a_item, write_cog  # noqa: E402

MB = 1024 * 1024


def _aws_binary() -> str:
    local = Path(sys.executable).parent / "aws"
    found = str(local) if local.exists() else shutil.which("aws")
    if not found:
        raise SystemExit("the `aws` CLI is missing: pip install awscli")
    return found


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_s3(work: Path, objects: int, object_mb: int, workers: int, rounds: int) -> dict[str, float]:
    """Stage-in of `objects` x `object_mb` MB from SeaweedFS, against `aws s3 cp --recursive`."""
    with SeaweedS3(data_dir=work / "seaweed") as s3:
        client = s3.client()
        s3.make_bucket("bench")
        blob = work / "blob.bin"
        blob.write_bytes(os.urandom(object_mb * MB))
        for i in range(objects):
            client.upload_file(str(blob), "bench", f"data/obj-{i:03d}.bin")
        blob.unlink()
        ks = Keystore(work / "keystore")
        ks.add("bench", S3KeyConfig(s3.access_key, s3.secret_key, s3.endpoint, s3.region))
        env = {**os.environ, "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
               "AWS_DEFAULT_REGION": s3.region, "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
        total = objects * object_mb
        ours: list[float] = []
        theirs: list[float] = []
        for r in range(rounds):  # alternate, so cache effects hit both alike
            out = work / f"ours-{r}"
            ours.append(_timed(lambda: stage_in("s3://bench/data/", out, keystore=ks, key="bench",
                                                progress=False, workers=workers)))
            shutil.rmtree(out)
            out = work / f"aws-{r}"
            cmd = [_aws_binary(), "s3", "cp", "--recursive", "--only-show-errors", "--endpoint-url", s3.endpoint,
                   "s3://bench/data/", str(out)]
            theirs.append(_timed(lambda: subprocess.run(cmd, env=env, check=True)))
            shutil.rmtree(out)
    best_ours, best_aws = min(ours), min(theirs)
    return {"MB": total, "blockkit_s": best_ours, "aws_s": best_aws, "blockkit_MBps": total / best_ours,
            "aws_MBps": total / best_aws, "ratio": best_aws / best_ours}


def _asset_site(root: Path, base: str, assets: int, asset_mb: int) -> str:
    data = root / "assets"
    data.mkdir(parents=True)
    blob = os.urandom(asset_mb * MB)
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "S2-bench", "geometry": None,
            "properties": {"datetime": "2024-06-01T10:00:00Z"}, "links": [], "assets": {}}
    for i in range(assets):
        (data / f"B{i:02d}.tif").write_bytes(blob)
        item["assets"][f"B{i:02d}"] = {"href": f"{base}/assets/B{i:02d}.tif", "file:size": len(blob)}
    (root / "item.json").write_text(json.dumps(item))
    return f"stac+{base}/item.json"


def bench_stac(work: Path, assets: int, asset_mb: int, workers: int, latency: float, rate_mbps: float,
               rounds: int) -> dict[str, float]:
    """A STAC item with `assets` assets: parallel vs sequential download from the local HTTP server."""
    root = work / f"www-{latency}-{rate_mbps}"
    with StacHttpServer(root, latency=latency, rate_limit=rate_mbps * MB) as server:
        uri = _asset_site(root, server.url, assets, asset_mb)
        seq: list[float] = []
        par: list[float] = []
        for r in range(rounds):
            out = work / f"seq-{r}"
            seq.append(_timed(lambda: stage_in(uri, out, progress=False, workers=1)))
            shutil.rmtree(out)
            out = work / f"par-{r}"
            par.append(_timed(lambda: stage_in(uri, out, progress=False, workers=workers)))
            shutil.rmtree(out)
        shutil.rmtree(root)
    return {"MB": assets * asset_mb, "sequential_s": min(seq), "parallel_s": min(par), "ratio": min(seq) / min(par)}


def bench_s2_item(work: Path, size: int, workers: int, latency: float, rate_mbps: float,
                  rounds: int) -> dict[str, float]:
    """Stage-in of a 13-band per-band item (+ thumbnail, metadata) vs a sequential loop over its assets."""
    import requests

    root = work / "s2www"
    with StacHttpServer(root, latency=latency, rate_limit=rate_mbps * MB) as server:
        item = s2_l2a_item(root, server.url, "S2-bench", size=size, noise=2000)
        (root / "item.json").write_text(json.dumps(item))
        hrefs = [a["href"] for a in item["assets"].values()]
        total = sum(a.get("file:size", 0) for a in item["assets"].values()) / MB

        def loop(out: Path) -> None:  # what a hand-written script does: one GET after the other
            out.mkdir()
            with requests.Session() as sess:
                sess.get(f"{server.url}/item.json", timeout=60).json()
                for href in hrefs:
                    with sess.get(href, stream=True, timeout=60) as r, open(out / href.rsplit("/", 1)[1], "wb") as fh:
                        for chunk in r.iter_content(1 << 20):
                            fh.write(chunk)

        seq: list[float] = []
        par: list[float] = []
        for r in range(rounds):
            out = work / f"s2seq-{r}"
            seq.append(_timed(lambda: loop(out)))
            shutil.rmtree(out)
            out = work / f"s2par-{r}"
            par.append(_timed(lambda: stage_in(f"stac+{server.url}/item.json", out, progress=False, workers=workers)))
            shutil.rmtree(out)
    shutil.rmtree(root)
    return {"MB": total, "files": len(hrefs), "sequential_s": min(seq), "blockkit_s": min(par),
            "ratio": min(seq) / min(par)}


def bench_ndvi_bands(work: Path, size: int, rounds: int) -> dict[str, float]:
    """NDVI window by window: red/nir as two per-band COGs through band_stack vs one stacked 2-band COG."""
    import numpy as np

    from blockkit.runtime.bands import band_stack
    from blockkit.runtime.raster import map_windows

    red, nir = band_values("B04", size, noise=2000), band_values("B08", size, noise=2000)
    folder = work / "ndvi"
    write_cog(folder / "item" / "B04.tif", red, 10.0)
    write_cog(folder / "item" / "B08.tif", nir, 10.0)
    write_cog(folder / "stacked.tif", np.stack([red, nir]), 10.0)
    feature = {"type": "Feature", "id": "b", "geometry": None, "properties": {"up42.data_path": "item/B04.tif"},
               "assets": {b: {"href": f"item/{b}.tif", "eo:bands": [{"name": b, "common_name": c}]}
                          for b, c in (("B04", "red"), ("B08", "nir"))}}

    def ndvi(w: np.ndarray) -> np.ndarray:
        r, n = w[0].astype("float32"), w[1].astype("float32")
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(r + n != 0, (n - r) / (r + n), np.float32("nan"))

    def per_band() -> None:
        with band_stack(feature, folder, ["red", "nir"]) as vrt:
            map_windows(vrt, folder / "out-vrt.tif", ndvi, bands=(1, 2), dtype="float32", nodata=float("nan"))

    def stacked() -> None:
        map_windows(folder / "stacked.tif", folder / "out-stack.tif", ndvi, bands=(1, 2), dtype="float32",
                    nodata=float("nan"))

    a: list[float] = []
    b: list[float] = []
    for _ in range(rounds):
        a.append(_timed(per_band))
        b.append(_timed(stacked))
    shutil.rmtree(folder)
    return {"per_band_s": min(a), "stacked_s": min(b), "ratio": min(a) / min(b)}


def main() -> None:
    """Run both benchmarks and print their numbers."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--objects", type=int, default=20)
    p.add_argument("--object-mb", type=int, default=50)
    p.add_argument("--assets", type=int, default=10)
    p.add_argument("--asset-mb", type=int, default=20)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--latency", type=float, default=0.05, help="emulated remote: seconds before each answer")
    p.add_argument("--rate-mbps", type=float, default=20.0, help="emulated remote: MB/s per connection")
    p.add_argument("--skip-s3", action="store_true")
    p.add_argument("--skip-stac", action="store_true")
    p.add_argument("--s2-size", type=int, default=1024, help="pixels of a 10 m band of the 13-band item")
    p.add_argument("--ndvi-size", type=int, default=4096, help="pixels per side of the NDVI bands")
    p.add_argument("--only-s2", action="store_true", help="only the per-band item and NDVI benchmarks")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="blockkit-bench-"))
    if args.only_s2:
        args.skip_s3 = args.skip_stac = True
    try:
        r = bench_s2_item(work, args.s2_size, args.workers, args.latency, args.rate_mbps, args.rounds)
        print(f"S2-like item, {r['files']} files ({r['MB']:.0f} MB, 13 per-band COGs, emulated remote: "
              f"{args.latency * 1000:.0f} ms, {args.rate_mbps:.0f} MB/s per connection): sequential loop "
              f"{r['sequential_s']:.2f} s, blockkit stage-in {r['blockkit_s']:.2f} s, ratio {r['ratio']:.2f}x "
              f"(target >= 3x)")
        r = bench_ndvi_bands(work, args.ndvi_size, args.rounds)
        print(f"NDVI {args.ndvi_size}^2, per-band COGs via band_stack {r['per_band_s']:.2f} s vs one stacked file "
              f"{r['stacked_s']:.2f} s: {r['ratio']:.2f}x (target <= 1.2x)")
        if not args.skip_s3:
            r = bench_s3(work, args.objects, args.object_mb, args.workers, args.rounds)
            print(f"S3 stage-in, {args.objects} x {args.object_mb} MB from SeaweedFS: "
                  f"blockkit {r['blockkit_MBps']:.0f} MB/s ({r['blockkit_s']:.2f} s), "
                  f"aws s3 cp --recursive {r['aws_MBps']:.0f} MB/s ({r['aws_s']:.2f} s), "
                  f"ratio {r['ratio']:.2f}x (target >= 0.8x)")
        if not args.skip_stac:
            for latency, rate, label in ((0.0, 0.0, "loopback, unthrottled"),
                                         (args.latency, args.rate_mbps,
                                          f"emulated remote: {args.latency * 1000:.0f} ms, {args.rate_mbps:.0f} MB/s per connection")):
                r = bench_stac(work, args.assets, args.asset_mb, args.workers, latency, rate, args.rounds)
                print(f"STAC item, {args.assets} assets x {args.asset_mb} MB ({label}): "
                      f"sequential {r['sequential_s']:.2f} s, parallel ({args.workers} workers) {r['parallel_s']:.2f} s, "
                      f"ratio {r['ratio']:.2f}x (target >= 2x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
