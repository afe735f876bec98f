"""The `blockkit` command line: thin typer commands over the layers."""

from __future__ import annotations

import importlib
import sys

import typer

from blockkit.cli._console import debugging, print_error, unexpected
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
    "blockkit.cli._validate_cmd",
    "blockkit.cli._new_cmd",
    "blockkit.cli._run_cmd",
    "blockkit.cli._runs_cmd",
    "blockkit.cli._build_cmd",
    "blockkit.cli._keys_cmd",
    "blockkit.cli._artifacts_cmd",
    "blockkit.cli._stage_cmd",
    "blockkit.cli._gateway_cmd",
    "blockkit.cli._export_cmd",
    "blockkit.cli._push_cmd",
)


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
        print_error(err)
        sys.exit(err.exit_status)
    except Exception as exc:  # noqa: BLE001 - never a bare traceback; BLOCKKIT_DEBUG=1 shows it
        if debugging():
            raise
        error = unexpected(exc)
        print_error(error)
        sys.exit(error.exit_status)
