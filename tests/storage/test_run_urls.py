"""`blockkit run` with an input URL that holds a password and a presigned signature: neither reaches the
runner's messages, provenance.json, run.json or the kept workflow copy (the storage layer's `public_url` rule)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockkit.runner._session import RunRequest, run_request
from tests.servers import write_geotiff
from tests.storage.hostile import HostileServer, body

ROOT = Path(__file__).resolve().parents[2]
PASSWORD, SIGNATURE = "PASSW0RD-userinfo", "SIGSECRET0123456789"


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer().start()
    yield server
    server.stop()


def _secret_url(hostile: HostileServer, path: str) -> str:
    return (f"http://alice:{PASSWORD}@127.0.0.1:{hostile.port}{path}"
            f"?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature={SIGNATURE}")


def _leaks(runs: Path, messages: list[str]) -> list[str]:
    found = [f"message: {m}" for m in messages if PASSWORD in m or SIGNATURE in m]
    for path in runs.rglob("*"):
        if path.is_file() and not path.is_symlink():
            text = path.read_bytes().decode("utf-8", "replace")
            found += [f"{path.relative_to(runs)} holds {s}" for s in (PASSWORD, SIGNATURE) if s in text]
    return found


def test_run_input_url_secrets_are_not_printed_or_recorded(hostile: HostileServer, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOCKKIT_KEYSTORE", str(tmp_path / "keystore"))
    hostile.routes["/scene.tif"] = body(write_geotiff(tmp_path / "scene.tif").read_bytes(), "image/tiff")
    hostile.routes["/out*"] = lambda h: h.send(404 if h.command == "PROPFIND" else 201)  # a new, empty collection
    block = shutil.copytree(ROOT / "examples" / "blocks" / "threshold", tmp_path / "threshold")
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(
        "name: secret-url\n"
        f"input: {_secret_url(hostile, '/scene.tif')}  # a presigned URL\n"
        f"output: webdav://bob:{PASSWORD}@127.0.0.1:{hostile.port}/out/?token={SIGNATURE}\n"
        "steps:\n"
        f"  mask: {{block: {block}}}\n"
    )
    messages: list[str] = []
    runs = tmp_path / "runs"
    summary = run_request(RunRequest(target=workflow, engine="process", runs_dir=runs, use_cache=False,
                                     on_message=messages.append))
    assert summary["outputs"] == [f"webdav://127.0.0.1:{hostile.port}/out/catalog.json"]
    assert any(m.startswith(f"staging in http://127.0.0.1:{hostile.port}/scene.tif?…") for m in messages), messages
    assert hostile.gets("/scene.tif"), "the input was not staged in"
    [provenance_path] = runs.rglob("provenance.json")
    recorded = json.loads(provenance_path.read_text())["workflow"]
    assert recorded["input"] == f"http://127.0.0.1:{hostile.port}/scene.tif?…"
    assert recorded["output"] == f"webdav://127.0.0.1:{hostile.port}/out/?…"
    [copy] = runs.rglob("workflow.yaml")
    assert "# a presigned URL" in copy.read_text()  # the layout stays
    assert _leaks(runs, messages) == []


@pytest.mark.parametrize("url, shown", [
    ("http://alice:pw@[::1]:8080/x?sig=1#frag", "http://[::1]:8080/x?…#frag"),
    ("https://Data.Example/Path/Item.json", "https://Data.Example/Path/Item.json"),
    ("https://u@host.example:443/a", "https://host.example:443/a"),
    ("s3://bucket/key?versionId=1", "s3://bucket/key?versionId=1"),
])
def test_public_url_drops_only_credentials_and_the_query(url: str, shown: str) -> None:
    from blockkit.storage._transfer import public_url

    assert public_url(url) == shown
