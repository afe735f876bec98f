"""`blockkit stage-in URI DIR` and `blockkit stage-out DIR URI`: move data in and out of a folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from blockkit.cli._console import reported_errors

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _size(text: Optional[str], option: str) -> Optional[int]:
    """`500M`, `20G`, `1T` or bytes; None when not given."""
    if text is None:
        return None
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = raw[-1:] if raw[-1:] in _UNITS and raw[-1:] else ""
    number = raw[: len(raw) - len(unit)]
    if not number.isdigit() or int(number) <= 0:
        raise typer.BadParameter(f"{text!r}: give a positive size like 500M, 20G or a number of bytes", param_hint=option)
    return int(number) * _UNITS[unit]


def stage_in_cmd(
    uri: str = typer.Argument(..., help="Path, http(s)://, stac+http(s)://, s3:// (or access-point ARN) or webdav(s):// URI."),
    directory: Path = typer.Argument(..., help="New or empty folder to fill (data.json + files)."),
    key: Optional[str] = typer.Option(None, "--key", help="Keystore key for the source (none: anonymous)."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="S3 endpoint for anonymous access to a non-AWS store."),
    workers: int = typer.Option(8, "--workers", min=1, max=64, help="Parallel downloads."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the data.json features as JSON."),
    max_file_size: Optional[str] = typer.Option(None, "--max-file-size", help="Largest file accepted (default 20G)."),
    max_total_size: Optional[str] = typer.Option(None, "--max-total-size", help="Most bytes in one stage-in (default 100G)."),
    file_deadline: Optional[float] = typer.Option(
        None, "--file-deadline", min=1, help="Seconds one file may take, retries included (default 7200)."
    ),
) -> None:
    """Fetch URI into DIR and write DIR/data.json (STAC sources also get catalog.json)."""
    import dataclasses

    from blockkit.storage._stagein import stage_in
    from blockkit.storage._transfer import TransferLimits

    changes: dict[str, Any] = {}
    for name, value in (("max_file_bytes", _size(max_file_size, "--max-file-size")),
                        ("max_total_bytes", _size(max_total_size, "--max-total-size")),
                        ("file_deadline", file_deadline)):
        if value is not None:
            changes[name] = value
    limits = dataclasses.replace(TransferLimits(), **changes)
    with reported_errors(as_json=as_json):
        fc = stage_in(uri, directory, key=key, progress=not quiet, workers=workers, endpoint=endpoint, limits=limits)
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
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Write into a target that already holds files (same names are replaced)."
    ),
) -> None:
    """Publish DIR's outputs as a STAC catalog at URI and print the catalog's URI (stage-in accepts it)."""
    from blockkit.storage._stageout import stage_out

    with reported_errors():
        catalog = stage_out(directory, uri, key=key, progress=not quiet, workers=workers, overwrite=overwrite)
    typer.echo(catalog)


def register(app: typer.Typer) -> None:
    """Add `stage-in` and `stage-out` to the blockkit CLI."""
    app.command("stage-in")(stage_in_cmd)
    app.command("stage-out")(stage_out_cmd)
