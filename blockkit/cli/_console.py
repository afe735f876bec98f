"""What every command shows a person: notes on stderr and errors, through one printer.

An error is printed the same way by every command: the headline `[EXIT_NAME] message`, then
each problem (`  - where: what`), then each hint (a command to run, a file to look at), all on
stderr; the process exits with the error's status. With `--json` the same error also goes to
stdout as one JSON object (`error_document`), so a script reads it where it reads a success.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import typer

from blockkit.contract.errors import BlockkitError, Interrupted, UnexpectedError


def say(text: str) -> None:
    """A note for the person at the terminal (progress, warnings): stderr, so stdout stays the result."""
    typer.echo(text, err=True)


def error_document(err: BlockkitError, *, hints: Sequence[str] = (),
                   fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The error as the JSON object `--json` prints: status, exit code and name, message, problems, hints."""
    return {
        "status": "interrupted" if isinstance(err, Interrupted) else "failed",
        "exit_code": err.exit_status,
        "exit_name": err.exit_name,
        "message": err.message,
        "problems": [{"where": p.where, "message": p.message} for p in err.problems],
        "hints": [*err.hints, *hints],
        **(fields or {}),
    }


def print_error(err: BlockkitError, *, hints: Sequence[str] = (), as_json: bool = False,
                fields: Mapping[str, Any] | None = None) -> None:
    """Print an error: headline, problems and hints on stderr (and its JSON document on stdout with --json)."""
    if as_json:
        typer.echo(json.dumps(error_document(err, hints=hints, fields=fields), default=str))
    typer.echo(err.headline(), err=True)
    details = err.details()
    if details:
        typer.echo(details, err=True)
    for hint in (*err.hints, *hints):
        if hint:
            typer.echo(hint, err=True)


def fail(err: BlockkitError, *, hints: Sequence[str] = (), as_json: bool = False,
         fields: Mapping[str, Any] | None = None) -> NoReturn:
    """Print an error (see `print_error`) and exit with its status."""
    print_error(err, hints=hints, as_json=as_json, fields=fields)
    raise typer.Exit(err.exit_status)


@contextmanager
def reported_errors(*, as_json: bool = False) -> Iterator[None]:
    """Turn a BlockkitError raised inside the block into `fail(err)`."""
    try:
        yield
    except BlockkitError as err:
        fail(err, as_json=as_json)


def unexpected(exc: BaseException) -> UnexpectedError:
    """An exception no layer turned into a BlockkitError, as one line (BLOCKKIT_DEBUG=1 re-raises it instead)."""
    text = (str(exc).strip().splitlines() or [""])[0][:500]
    return UnexpectedError(f"{type(exc).__name__}: {text} (BLOCKKIT_DEBUG=1 shows the traceback)")


def debugging() -> bool:
    """BLOCKKIT_DEBUG is set: let unexpected exceptions show their traceback."""
    return bool(os.environ.get("BLOCKKIT_DEBUG"))
