"""The keys and artifacts commands: secrets never echoed, errors one line with an exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import typer
from typer.testing import CliRunner

from blockkit.cli import _artifacts_cmd as artifacts_cmd, _keys_cmd as keys_cmd

SECRET = "cli-Secret-9f8e7d"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    monkeypatch.setenv("BLOCKKIT_KEYSTORE", str(tmp_path / "ks"))
    monkeypatch.setenv("BLOCKKIT_KEYSTORE_PASSPHRASE", "pp")
    app = typer.Typer()
    keys_cmd.register(app)
    artifacts_cmd.register(app)
    return app


def run(app: typer.Typer, *args: str, input: str | None = None) -> object:
    return CliRunner().invoke(app, list(args), input=input)


def test_keys_add_list_remove(cli: typer.Typer) -> None:
    r = run(cli, "keys", "add", "prod", "--type", "s3", "--endpoint", "http://127.0.0.1:9", "--access-key", "AK1",
            input=SECRET + "\n")
    assert r.exit_code == 0, r.output
    assert SECRET not in r.output
    r = run(cli, "keys", "add", "drive", "--type", "webdav", "--endpoint", "http://127.0.0.1:9/dav", input=f"ann\n{SECRET}\n")
    assert r.exit_code == 0, r.output
    r = run(cli, "keys", "list")
    assert "prod" in r.output and "webdav" in r.output and "http://127.0.0.1:9/dav" in r.output
    assert SECRET not in r.output and "AK1" not in r.output
    listed = json.loads(run(cli, "keys", "list", "--json").output)
    assert {k["name"] for k in listed} == {"prod", "drive"}
    r = run(cli, "keys", "remove", "prod")
    assert r.exit_code == 0
    r = run(cli, "keys", "remove", "prod")
    assert r.exit_code == 4
    assert r.output.strip().splitlines() == ["[WRONG_INPUT_ERROR] no key named 'prod'; see `blockkit keys list`"]


def test_keys_errors_are_one_line(cli: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    r = run(cli, "keys", "add", "x", "--type", "ftp", "--secret", "s")
    assert r.exit_code == 4 and "use --type s3 or --type webdav" in r.output
    run(cli, "keys", "add", "prod", "--type", "s3", "--access-key", "A", "--secret", SECRET)
    monkeypatch.setenv("BLOCKKIT_KEYSTORE_PASSPHRASE", "wrong")
    r = run(cli, "keys", "share", "prod", "--public-key", "/nonexistent.pem", "-o", "/dev/null")
    assert r.exit_code == 4 and "cannot read public key" in r.output
    assert "Traceback" not in r.output


def test_share_import_between_keystores(cli: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(cli, "keys", "add", "prod", "--type", "s3", "--access-key", "A", "--secret", SECRET)
    # bob's keystore gives his public key
    monkeypatch.setenv("BLOCKKIT_KEYSTORE", str(tmp_path / "bob"))
    monkeypatch.delenv("BLOCKKIT_KEYSTORE_PASSPHRASE")
    pub = tmp_path / "bob.pem"
    assert run(cli, "keys", "public-key", "-o", str(pub)).exit_code == 0
    monkeypatch.setenv("BLOCKKIT_KEYSTORE", str(tmp_path / "ks"))
    monkeypatch.setenv("BLOCKKIT_KEYSTORE_PASSPHRASE", "pp")
    shared = tmp_path / "prod.share.json"
    r = run(cli, "keys", "share", "prod", "--public-key", str(pub), "-o", str(shared))
    assert r.exit_code == 0, r.output
    assert SECRET.encode() not in shared.read_bytes()
    monkeypatch.setenv("BLOCKKIT_KEYSTORE", str(tmp_path / "bob"))
    monkeypatch.delenv("BLOCKKIT_KEYSTORE_PASSPHRASE")
    r = run(cli, "keys", "import", str(shared), "--name", "alice-prod")
    assert r.exit_code == 0, r.output
    assert "alice-prod" in run(cli, "keys", "list").output


def test_artifacts_commands(cli: typer.Typer, seaweed, tmp_path: Path) -> None:
    seaweed.make_bucket("artifacts")
    r = run(cli, "keys", "add", "store", "--type", "s3", "--endpoint", seaweed.endpoint, "--bucket", "artifacts",
            "--access-key", seaweed.access_key, input=seaweed.secret_key + "\n")
    assert r.exit_code == 0, r.output
    f = tmp_path / "map.png"
    f.write_bytes(b"\x89PNG fake")
    r = CliRunner().invoke(cli, ["artifacts", "upload", str(f), "--key", "store", "--expires", "120"])
    assert r.exit_code == 0, r.output
    uri, url = r.stdout.strip().splitlines()[:2]
    assert uri.startswith("s3://artifacts/") and requests.get(url, timeout=10).content == f.read_bytes()
    assert seaweed.secret_key not in r.output
    r = run(cli, "artifacts", "url", uri, "--key", "store", "--expires", "30")
    assert r.exit_code == 0 and requests.get(r.output.strip(), timeout=10).status_code == 200
    r = run(cli, "artifacts", "url", uri, "--key", "store", "--expires", "999999999")
    assert r.exit_code == 2 and r.output.startswith("[INPUT_PARAMETERS_ERROR] expiry")
    r = run(cli, "artifacts", "upload", str(f), "--key", "missing")
    assert r.exit_code == 2 and "keys add missing" in r.output


def test_stage_commands(stac_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from blockkit.cli import _stage_cmd as stage_cmd

    monkeypatch.setenv("BLOCKKIT_KEYSTORE", str(tmp_path / "ks"))
    app = typer.Typer()
    stage_cmd.register(app)
    server, site = stac_server
    r = CliRunner().invoke(app, ["stage-in", f"stac+{site.item_url}", str(tmp_path / "in"), "-q"])
    assert r.exit_code == 0, r.output
    assert "staged 1 feature(s)" in r.output
    r = CliRunner().invoke(app, ["stage-out", str(tmp_path / "in"), str(tmp_path / "out"), "-q"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(tmp_path / "out" / "catalog.json")
    r = CliRunner().invoke(app, ["stage-in", "gopher://x/y", str(tmp_path / "bad")])
    assert r.exit_code == 4 and r.output.startswith("[WRONG_INPUT_ERROR] 'gopher://x/y': unknown scheme")
    assert not (tmp_path / "bad").exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "data.json").write_text('{"type": "FeatureCollection", "features": []}')
    r = CliRunner().invoke(app, ["stage-out", str(tmp_path / "empty"), str(tmp_path / "o2")])
    assert r.exit_code == 6 and r.output.startswith("[NO_OUTPUT_ERROR] no output")
    r = CliRunner().invoke(app, ["stage-in", "s3://b/k", str(tmp_path / "k"), "--key", "nope"])
    assert r.exit_code == 4 and "no key named 'nope'" in r.output
