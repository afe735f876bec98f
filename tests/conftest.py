"""Shared fixtures: Docker availability (never skipped under CI=true)."""

from __future__ import annotations

import os

import pytest


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def docker_client():
    """A live docker SDK client; skips outside CI when no daemon answers, fails in CI."""
    try:
        import docker

        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no usable daemon
        if _in_ci():
            pytest.fail(f"CI=true but no Docker daemon answers: {exc}")
        pytest.skip(f"no Docker daemon: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    """The locally made base image (see .ci/docker-setup.sh)."""
    name = os.environ.get("BLOCKKIT_BASE_IMAGE", "blockkit-base:bookworm")
    try:
        docker_client.images.get(name)
    except Exception as exc:  # noqa: BLE001
        if _in_ci():
            pytest.fail(f"CI=true but base image {name} is missing: {exc}")
        pytest.skip(f"base image {name} missing (run bash .ci/docker-setup.sh)")
    return name
