"""`blockkit stage-in URI DIR` and `blockkit stage-out DIR URI`: move data in and out of a folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from blockkit.cli.keys_cmd import reported_errors


def stage_in_cmd(
    uri: str = typer.Argument(..., help="Path, http(s)://, stac+http(s)://, s3:// (or access-point ARN) or webdav(s):// URI."),
    directory: Path = typer.Argument(..., help="New or empty folder to fill (data.json + files)."),
    key: Optional[str] = typer.Option(None, "--key", help="Keystore key for the source (none: anonymous)."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="S3 endpoint for anonymous access to a non-AWS store."),
    workers: int = typer.Option(8, "--workers", min=1, max=64, help="Parallel downloads."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the data.json features as JSON."),
) -> None:
    """Fetch URI into DIR and write DIR/data.json (STAC sources also get catalog.json)."""
    from blockkit.storage.stagein import stage_in

    with reported_errors():
        fc = stage_in(uri, directory, key=key, progress=not quiet, workers=workers, endpoint=endpoint)
    if as_json:
        typer.echo(json.dumps(fc.to_dict(), indent=2))
    else:
        typer.echo(f"staged {len(fc.features)} feature(s) into {directory}")


def stage_out_cmd(
    directory: Path = typer.Argument(..., help="Folder with data.json (a block's output)."),
    uri: str = typer.Argument(..., help="Target folder, s3://bucket/prefix or webdav(s)://host/path."),
    key: Optional[str] = typer.Option(None, "--key", help="Keystore key with write access to the target."),
    workers: int = typer.Option(8, "--workers", min=1, max=64, help="Parallel uploads."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Publish DIR's outputs as a STAC catalog at URI and print the catalog's URI."""
    from blockkit.storage.stageout import stage_out

    with reported_errors():
        catalog = stage_out(directory, uri, key=key, progress=not quiet, workers=workers)
    typer.echo(catalog)


def register(app: typer.Typer) -> None:
    """Add `stage-in` and `stage-out` to the blockkit CLI."""
    app.command("stage-in")(stage_in_cmd)
    app.command("stage-out")(stage_out_cmd)
