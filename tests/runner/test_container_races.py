"""The orphan sweep against a shared daemon: containers vanish between the list and their removal.

Several runners (and their watchdogs) share one Docker daemon; a container the sweep listed may be
gone a moment later. Gone is what the sweep wants: it must neither fail nor claim it removed it.
"""

from __future__ import annotations

import secrets
import subprocess
import threading
from typing import Any

import pytest

from blockkit.runner._docker_client import CONTAINER_LABEL, owner_labels
from blockkit.runner._docker_engine import DockerEngine

pytestmark = pytest.mark.docker


def _dead_pid() -> str:
    dead = subprocess.Popen(["true"])
    dead.wait()
    return str(dead.pid)


def _orphans(client: Any, image: str, count: int, token: str) -> list[Any]:
    """Created (never started) containers labelled as left by a runner of this host that died."""
    labels = {**owner_labels(), "blockkit.pid": _dead_pid(), "blockkit.test": token}
    return [client.containers.create(image, ["sleep", "60"], labels=labels, network_mode="none")
            for _ in range(count)]


def _listed(client: Any, token: str) -> list[dict[str, Any]]:
    return client.api.containers(all=True, filters={"label": [f"{CONTAINER_LABEL}=1", f"blockkit.test={token}"]})


def _cleanup(client: Any, token: str) -> None:
    for entry in _listed(client, token):
        try:
            client.api.remove_container(entry["Id"], force=True)
        except Exception:  # noqa: BLE001 - removed meanwhile
            pass


def test_a_container_removed_after_the_list_is_already_gone_for_the_sweep(docker_client, base_image) -> None:
    token = secrets.token_hex(6)
    engine = DockerEngine()
    try:
        made = _orphans(docker_client, base_image, 3, token)
        listed = _listed(docker_client, token)
        assert len(listed) == 3
        # The race, for real: the middle one disappears after the list and before the sweep uses it.
        docker_client.api.remove_container(made[1].id, force=True)
        removed = engine.remove_dead_owners(listed)
        assert sorted(removed) == sorted([made[0].name, made[2].name])
        assert _listed(docker_client, token) == []
    finally:
        _cleanup(docker_client, token)


@pytest.mark.slow
def test_the_sweep_and_a_concurrent_remover_leave_nothing_and_raise_nothing(docker_client, base_image) -> None:
    token = secrets.token_hex(6)
    engine = DockerEngine()
    try:
        for _ in range(3):
            made = _orphans(docker_client, base_image, 8, token)
            listed = _listed(docker_client, token)
            failures: list[BaseException] = []
            start = threading.Barrier(2)

            def remover(ids: list[str]) -> None:
                start.wait()
                for ident in ids:
                    try:
                        docker_client.api.remove_container(ident, force=True)
                    except Exception as exc:  # noqa: BLE001 - the sweep got there first
                        if getattr(exc, "status_code", None) not in (404, 409):
                            failures.append(exc)

            # The other remover works from the end of the list, the sweep from its start: they meet.
            other = threading.Thread(target=remover, args=([c.id for c in reversed(made)],))
            other.start()
            start.wait()
            removed = engine.remove_dead_owners(listed)
            other.join(timeout=60)
            assert failures == []
            assert set(removed) <= {c.name for c in made}
            assert _listed(docker_client, token) == []
    finally:
        _cleanup(docker_client, token)

