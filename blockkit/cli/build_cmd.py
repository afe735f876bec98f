"""`blockkit build BLOCK_DIR`: build a block's image from Dockerfile.base, offline-capable."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from blockkit.contract.errors import BlockkitError


def build(
    block_dir: Path = typer.Argument(..., help="Block folder (with UP42Manifest.json)."),
    base_image: str = typer.Option(
        "blockkit-base:bookworm", "--base-image", help="Image to build on (made by .ci/docker-setup.sh)."
    ),
    wheelhouse: Optional[Path] = typer.Option(
        None,
        "--wheelhouse",
        help="Host folder of wheels reused across builds (default: $BLOCKKIT_WHEELHOUSE or <repo>/.wheelhouse).",
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even when an image for this content exists."),
    prune: bool = typer.Option(False, "--prune", help="Then remove this block's older images (not in use)."),
) -> None:
    """Build the Docker image of a block, tagged by a hash of its content."""
    from blockkit.runner.build import build_block_image, prune_block_images

    try:
        built = build_block_image(block_dir, base_image=base_image, wheelhouse=wheelhouse, force=force)
        removed, kept = prune_block_images(built, block_dir) if prune else ([], [])
    except BlockkitError as err:
        typer.echo(err.headline(), err=True)
        details = err.details()
        if details:
            typer.echo(details, err=True)
        raise typer.Exit(int(err.exit_code)) from None
    state = "built" if built.rebuilt else "up to date (cached)"
    typer.echo(f"{built.tag}  {built.image_id[:19]}  {state}")
    for tag in removed:
        typer.echo(f"removed older image {tag}")
    for tag in kept:
        typer.echo(f"kept older image {tag}")


def register(app: typer.Typer) -> None:
    """Add the `build` command to the blockkit CLI."""
    app.command("build")(build)
