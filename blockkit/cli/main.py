"""The `blockkit` command line: thin typer commands over the layers."""

from __future__ import annotations

import importlib
import os
import sys
from typing import NoReturn

import typer

from blockkit.contract.errors import BlockkitError

app = typer.Typer(
    name="blockkit",
    help="Build, validate, run and export Earth-observation processing blocks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules, each with `register(app)`; one per concern.
COMMAND_MODULES = (
    "blockkit.cli.validate_cmd",
    "blockkit.cli.new_cmd",
    "blockkit.cli.run_cmd",
    "blockkit.cli.runs_cmd",
    "blockkit.cli.build_cmd",
    "blockkit.cli.keys_cmd",
    "blockkit.cli.artifacts_cmd",
    "blockkit.cli.stage_cmd",
    "blockkit.cli.gateway_cmd",
    "blockkit.cli.export_cmd",
    "blockkit.cli.push_cmd",
)


def fail(err: BlockkitError) -> NoReturn:
    """Print an error as one line plus its details, and exit with its code."""
    typer.echo(err.headline(), err=True)
    details = err.details()
    if details:
        typer.echo(details, err=True)
    raise typer.Exit(int(err.exit_code) or 1)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a command family not installed in this build
            raise
        module.register(app)


_register_all()


def main() -> None:
    """Entry point of the `blockkit` script."""
    try:
        app()
    except BlockkitError as err:  # a command that did not catch its own error
        typer.echo(err.headline(), err=True)
        sys.exit(int(err.exit_code) or 1)
    except Exception as exc:  # noqa: BLE001 - never a bare traceback; BLOCKKIT_DEBUG=1 shows it
        if os.environ.get("BLOCKKIT_DEBUG"):
            raise
        text = (str(exc).strip().splitlines() or [""])[0][:500]
        typer.echo(f"[UNEXPECTED_ERROR] {type(exc).__name__}: {text} (BLOCKKIT_DEBUG=1 shows the traceback)", err=True)
        sys.exit(1)
