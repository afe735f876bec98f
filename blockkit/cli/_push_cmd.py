"""`blockkit push WORKFLOW|BLOCK --registry R`: push the images an exported workflow names to a registry."""

from __future__ import annotations

from pathlib import Path

import typer

from blockkit.cli._console import reported_errors, say
from blockkit.cli._options import DEFAULT_BASE_IMAGE, BaseImage, Wheelhouse


def push(
    target: Path = typer.Argument(..., help="workflow.yaml (every step's image) or a block folder"),
    registry: str = typer.Option(..., "--registry", help="HOST:PORT/PATH to push to (port and path optional), as given to "
                                                         "`blockkit export cwl --registry`"),
    build: bool = typer.Option(True, "--build/--no-build",
                               help="build (or reuse) the images first (default), or push the tags "
                                    "`blockkit build` gives, which must exist"),
    base_image: BaseImage = DEFAULT_BASE_IMAGE,
    wheelhouse: Wheelhouse = None,
) -> None:
    """Tag the images a workflow needs as REGISTRY/<image> and push them (credentials: `docker login`)."""
    from blockkit.export._push import check_registry, images_to_push, push_images
    from blockkit.runner._docker_client import docker_client

    with reported_errors():
        prefix = check_registry(registry)  # a typo fails before any build
        images = images_to_push(target, build=build, base_image=base_image, wheelhouse=wheelhouse, say=say)
        client = docker_client(timeout=600)
        try:
            pushed = push_images(images, prefix, client=client, say=say)
        finally:
            client.close()
    for item in pushed:
        typer.echo(item.remote)


def register(app: typer.Typer) -> None:
    """Add the `push` command."""
    app.command("push")(push)
