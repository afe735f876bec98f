"""Storage benchmarks: S3 stage-in vs `aws s3 cp --recursive`, and parallel vs sequential STAC asset download.

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

from blockkit.storage.keystore import Keystore, S3KeyConfig  # noqa: E402
from blockkit.storage.stagein import stage_in  # noqa: E402
from tests.servers import SeaweedS3, StacHttpServer  # noqa: E402

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
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="blockkit-bench-"))
    try:
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
