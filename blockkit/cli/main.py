"""The `blockkit` command line: thin typer commands over the layers."""

from __future__ import annotations

import importlib
import signal
import sys
from typing import Any

import typer

from blockkit.cli._console import debugging, print_error, unexpected
from blockkit.contract.errors import BlockkitError, Interrupted, ValidationError

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
        # Not standalone: click's usage errors come here, to be printed as every error is.
        returned = app(standalone_mode=False)  # a command's typer.Exit(n) comes back as n
        command_status = returned if isinstance(returned, int) else 0
        sys.exit(command_status)
    except typer.Abort:  # end of input at a prompt
        print_error(Interrupted("stopped at a prompt", signum=signal.SIGINT))
        sys.exit(130)
    except BlockkitError as err:  # a command that did not catch its own error
        print_error(err)
        sys.exit(err.exit_status)
    except Exception as exc:  # noqa: BLE001 - never a bare traceback; BLOCKKIT_DEBUG=1 shows it
        if _is_a(exc, "NoArgsIsHelpError"):  # `blockkit` or `blockkit runs` alone: the help
            exc.show()  # type: ignore[attr-defined]
            sys.exit(0)
        if _is_a(exc, "UsageError"):
            usage = usage_error(exc)
            print_error(usage, as_json="--json" in sys.argv[1:])
            sys.exit(usage.exit_status)
        if debugging():
            raise
        error = unexpected(exc)
        print_error(error)
        sys.exit(error.exit_status)


def _is_a(exc: BaseException, name: str) -> bool:
    """Whether `exc` is a click exception of that class name (typer carries its own copy of click)."""
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def usage_error(exc: Any) -> ValidationError:
    """A command line click could not parse (an unknown option or command, a bad or missing value), as one line."""
    command = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "blockkit"
    message = " ".join(exc.format_message().split())
    return ValidationError(f"{command}: {message} (see {command} --help)")
