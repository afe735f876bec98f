"""The access log is bounded: a block making requests without end, or with 64 KiB paths, cannot fill the disk."""

from __future__ import annotations

import contextlib
import http.client
import json
from pathlib import Path

from blockkit.gateway import Gateway
from blockkit.gateway._exchange import MAX_LOGGED_PATH, AccessLog


def _get(endpoint: str, path: str) -> int:
    host, port = endpoint.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_requests_past_the_limit_are_counted_and_long_paths_cut(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    log = tmp_path / "access.log"
    long_path = "/input/" + "k" * 20_000
    with Gateway({"input": tmp_path / "in"}, access_log=log, access_log_limit=64 << 10) as gateway:
        endpoint = gateway.start()
        statuses = [_get(endpoint, long_path if i % 2 else f"/input/missing-{i}") for i in range(600)]
    assert set(statuses) <= {400, 404}  # no such key; a key past S3's 1024 bytes
    text = log.read_text()
    assert len(text) <= (64 << 10) + 300  # the limit, and the closing count
    records = [json.loads(line) for line in text.splitlines()]
    requests = [r for r in records if "method" in r]
    notes = [r for r in records if "note" in r]
    assert "access log limit of 65536 bytes reached" in notes[0]["note"]
    assert notes[-1]["note"] == "requests left out of this log"
    assert len(requests) + notes[-1]["left_out"] == 600  # every request logged or counted
    cut = [r for r in requests if r.get("path_cut")]
    assert cut and all(len(r["path"]) == MAX_LOGGED_PATH and r["path_cut"] == len(long_path) - MAX_LOGGED_PATH
                       for r in cut)


def test_an_access_log_that_cannot_be_written_never_fails_a_request() -> None:
    full = open("/dev/full", "a", encoding="utf-8")  # noqa: SIM115 - every write: ENOSPC
    log = AccessLog(full)
    for i in range(100):
        log.write({"method": "GET", "path": f"/input/{i}", "status": 200})
    log.close()
    with contextlib.suppress(OSError):  # what the stream still buffers cannot be flushed either
        full.close()


def test_gateways_appending_to_one_log_share_its_limit_and_every_long_field_is_cut(tmp_path: Path) -> None:
    """The process engine starts a gateway per feature of a scattered step, all on one log file."""
    path = tmp_path / "step.gateway.log"
    for part in range(5):
        with path.open("a", encoding="utf-8") as stream:
            log = AccessLog(stream, limit=16 << 10)
            for i in range(200):
                log.write({"method": "GET", "path": f"/input/{part}-{i}", "range": "bytes=" + "9" * 5000, "status": 206})
            log.close()
    text = path.read_text()
    assert len(text) <= (16 << 10) + 5 * 300  # one limit for all five, and each one's closing count
    records = [json.loads(line) for line in text.splitlines()]
    logged = [r for r in records if "method" in r]
    assert logged and all(len(r["range"]) == MAX_LOGGED_PATH and r["range_cut"] == 5006 - MAX_LOGGED_PATH
                          for r in logged)
    assert len(logged) + sum(r.get("left_out", 0) for r in records) == 1000


def test_only_the_first_internal_errors_print_a_traceback(tmp_path: Path, monkeypatch, capsys) -> None:
    """A block that found a request making the gateway fail cannot fill the log with tracebacks."""
    from blockkit.gateway._exchange import MAX_PRINTED_TRACEBACKS
    from blockkit.gateway._handler import S3Handler

    def broken(self, *args, **kwargs):
        raise RuntimeError("a bug the block found")

    monkeypatch.setattr(S3Handler, "_list_buckets", broken)  # a fault injected into the real server
    (tmp_path / "in").mkdir()
    with Gateway({"input": tmp_path / "in"}) as gateway:
        endpoint = gateway.start()
        statuses = [_get(endpoint, "/") for _ in range(3 * MAX_PRINTED_TRACEBACKS)]
    assert set(statuses) == {500}
    err = capsys.readouterr().err
    assert err.count("RuntimeError: a bug the block found") == MAX_PRINTED_TRACEBACKS
    assert err.count("internal errors printed; later ones are only counted") == 1
