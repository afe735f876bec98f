"""`blockkit build BLOCK_DIR`: build a block's image (its own Dockerfile, or Dockerfile.base), offline-capable."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from blockkit.cli._console import reported_errors
from blockkit.contract.errors import ValidationError


def parse_build_args(values: list[str]) -> dict[str, str]:
    """`NAME=VALUE` strings as a dict (a malformed one is a one-line ValidationError)."""
    args: dict[str, str] = {}
    for value in values:
        name, sep, arg = value.partition("=")
        if not sep or not name or not name.replace("_", "a").isalnum():
            raise ValidationError(f"--build-arg {value!r} must be NAME=VALUE")
        args[name] = arg
    return args


def build(
    block_dir: Path = typer.Argument(..., help="Block folder (with UP42Manifest.json)."),
    base_image: Optional[str] = typer.Option(
        None, "--base-image",
        help="Image to build on: for Dockerfile.base (default blockkit-base:bookworm, made by .ci/docker-setup.sh); "
        "for a block's own Dockerfile it replaces the image of its last FROM.",
    ),
    build_arg: List[str] = typer.Option(
        [], "--build-arg", help="NAME=VALUE for a block's own Dockerfile (e.g. BASE=blockkit-base:bullseye); repeatable."
    ),
    wheelhouse: Optional[Path] = typer.Option(
        None,
        "--wheelhouse",
        help="Host folder of wheels reused across builds (default: $BLOCKKIT_WHEELHOUSE or <repo>/.wheelhouse).",
    ),
    user: str = typer.Option(
        "1000", "--user",
        help="User of images built from Dockerfile.base: 1000, or root when the platform mounts a root-owned "
        "output folder (as UP42 did). A block's own Dockerfile decides for itself.",
    ),
    network: bool = typer.Option(
        False, "--network", help="Let a block's own Dockerfile use the network while building (e.g. apt-get)."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even when an image for this content exists."),
    prune: bool = typer.Option(False, "--prune", help="Then remove this block's older images (not in use)."),
) -> None:
    """Build the Docker image of a block, tagged by a hash of everything that goes into it."""
    from blockkit.runner._build import build_block_image, prune_block_images

    with reported_errors():
        built = build_block_image(
            block_dir, base_image=base_image, wheelhouse=wheelhouse, force=force,
            build_args=parse_build_args(build_arg), user=user, network=network,
        )
        removed, kept = prune_block_images(built, block_dir) if prune else ([], [])
    for line in built.warnings:
        typer.echo(f"warning: {line}", err=True)
    state = "built" if built.rebuilt else "up to date (cached)"
    typer.echo(f"{built.tag}  {built.image_id[:19]}  {state} from {built.dockerfile}")
    for tag in removed:
        typer.echo(f"removed older image {tag}")
    for tag in kept:
        typer.echo(f"kept older image {tag}")


def register(app: typer.Typer) -> None:
    """Add the `build` command to the blockkit CLI."""
    app.command("build")(build)
