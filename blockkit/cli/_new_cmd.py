"""`blockkit new NAME`: a working block from templates/."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import typer

from blockkit.cli._console import fail
from blockkit.contract.errors import BlockkitError, InputParametersError, ValidationError

_NAME = re.compile(r"^[a-z0-9][a-z0-9-_]{1,62}$")


def template_dir() -> Path:
    """The block template, shipped inside the package (`templates/` in the repository links to it)."""
    import blockkit

    return Path(blockkit.__file__).resolve().parent / "templates" / "block"


def create_block(name: str, parent: Path) -> Path:
    """Copy the template to `<parent>/<name>` with the name filled in."""
    if "/" in name or "\\" in name or name in (".", ".."):
        raise InputParametersError(
            f"block name {name!r} is a path, not a name: give a name and choose the folder with --dir"
        )
    if not _NAME.match(name):
        raise InputParametersError(f"block name {name!r} must be 2-63 lowercase letters, digits, '-' or '_'")
    source = template_dir()
    if not source.is_dir():
        raise ValidationError(f"block template not found at {source}")
    target = parent / name
    if target.exists() or target.is_symlink():
        raise InputParametersError(f"{target} already exists; choose another name or remove it")
    if not parent.is_dir():
        raise InputParametersError(f"--dir {parent} is not a folder")
    display = name.replace("-", " ").replace("_", " ").title()
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    for path in target.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            path.write_text(text.replace("{{name}}", name).replace("{{display_name}}", display), encoding="utf-8")
    return target


def register(app: typer.Typer) -> None:
    """Add the `new` command."""

    @app.command()
    def new(
        name: str = typer.Argument(..., help="block name (lowercase, digits, - or _)"),
        directory: Path = typer.Option(Path("."), "--dir", help="where to create the block folder"),
    ) -> None:
        """Create a new block (manifest, code, Dockerfile, tests) from the template."""
        try:
            target = create_block(name, directory)
        except BlockkitError as err:
            fail(err)
        except OSError as exc:  # e.g. a read-only --dir
            fail(InputParametersError(f"cannot create the block in {directory}: {exc.strerror or exc}"))
        typer.echo(f"created block {name!r} in {target}")
        typer.echo(f"next: blockkit validate {target} && python -m pytest {target}/tests")
