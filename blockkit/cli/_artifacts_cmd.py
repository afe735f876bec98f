"""`blockkit artifacts ...`: upload a file to a keystore-backed S3 store and hand out presigned URLs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from blockkit.cli._console import reported_errors

artifacts_app = typer.Typer(name="artifacts", help="Share files via presigned URLs.", no_args_is_help=True)


@artifacts_app.command("upload")
def upload(
    file: Path = typer.Argument(..., help="File to upload."),
    key: str = typer.Option(..., "--key", help="Keystore s3 key with a bucket."),
    expires: int = typer.Option(3600, "--expires", help="URL lifetime in seconds (1..604800)."),
    name: Optional[str] = typer.Option(None, "--name", help="Object key (default: artifacts/YYYY/MM/DD/<id>-<file>)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Upload FILE and print its s3:// URI and a presigned URL."""
    from blockkit.storage._artifacts import check_expiry, upload_artifact

    with reported_errors(as_json=as_json):
        check_expiry(expires)
        art = upload_artifact(file, key=key, expires=expires, object_name=name)
    if as_json:
        typer.echo(json.dumps(art.to_dict(), indent=2))
    else:
        typer.echo(art.uri)
        typer.echo(art.url)
        typer.echo(f"expires {art.expires_at.isoformat()}", err=True)


@artifacts_app.command("url")
def url(
    uri: str = typer.Argument(..., help="s3://bucket/key of an object."),
    key: str = typer.Option(..., "--key", help="Keystore s3 key that can read it."),
    expires: int = typer.Option(3600, "--expires", help="URL lifetime in seconds (1..604800)."),
) -> None:
    """Print a presigned GET URL for an object."""
    from blockkit.storage._artifacts import presigned_url

    with reported_errors():
        typer.echo(presigned_url(uri, key, expires))


def register(app: typer.Typer) -> None:
    """Add the `artifacts` command group to the blockkit CLI."""
    app.add_typer(artifacts_app, name="artifacts")
