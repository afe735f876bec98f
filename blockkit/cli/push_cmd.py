"""`blockkit push WORKFLOW|BLOCK --registry R`: push the images an exported workflow names to a registry."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from blockkit.contract.errors import BlockkitError


def push(
    target: Path = typer.Argument(..., help="workflow.yaml (every step's image) or a block folder"),
    registry: str = typer.Option(..., "--registry", help="HOST:PORT/PATH to push to (port and path optional), as given to "
                                                         "`blockkit export cwl --registry`"),
    build: bool = typer.Option(True, "--build/--no-build",
                               help="build (or reuse) the images first (default), or push the tags "
                                    "`blockkit build` gives, which must exist"),
    base_image: str = typer.Option("blockkit-base:bookworm", "--base-image", help="image blocks are built on"),
    wheelhouse: Optional[Path] = typer.Option(None, "--wheelhouse", help="host folder of wheels for offline builds"),
) -> None:
    """Tag the images a workflow needs as REGISTRY/<image> and push them (credentials: `docker login`)."""
    from blockkit.cli.main import fail
    from blockkit.export.push import check_registry, images_to_push, push_images
    from blockkit.runner.docker_engine import docker_client

    def say(text: str) -> None:
        typer.echo(text, err=True)

    try:
        prefix = check_registry(registry)  # a typo fails before any build
        images = images_to_push(target, build=build, base_image=base_image, wheelhouse=wheelhouse, say=say)
        client = docker_client(timeout=600)
        try:
            pushed = push_images(images, prefix, client=client, say=say)
        finally:
            client.close()
    except BlockkitError as err:
        fail(err)
    for item in pushed:
        typer.echo(item.remote)


def register(app: typer.Typer) -> None:
    """Add the `push` command."""
    app.command("push")(push)
