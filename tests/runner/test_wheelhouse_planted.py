"""Files planted in a wheelhouse or left by a base image's container: nothing follows a link it did not make."""

from __future__ import annotations

import io
import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from blockkit.contract.errors import BuildError
from blockkit.runner._wheelhouse import (
    PythonTarget,
    WheelServer,
    _locked,
    complete_in_image,
    image_outputs,
    link_or_copy,
)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "id_rsa"
    path.parent.mkdir()
    path.write_text("HOST SECRET\n")
    return path


def test_a_symlink_planted_as_the_wheelhouse_lock_is_refused_and_its_target_kept(tmp_path: Path, secret: Path) -> None:
    """A cloned repository may ship `.wheelhouse/.lock -> ~/.bashrc`: opening it must not empty the target."""
    house = tmp_path / "house"
    house.mkdir()
    (house / ".lock").symlink_to(secret)
    with pytest.raises(BuildError, match="cannot lock the wheelhouse.*symlink"):
        with _locked(house):
            pass
    assert secret.read_text() == "HOST SECRET\n"


def test_the_wheelhouse_lock_still_works(tmp_path: Path) -> None:
    with _locked(tmp_path):
        with pytest.raises(BlockingIOError):
            import fcntl

            with open(tmp_path / ".lock", "rb") as other:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_symlink_in_the_wheelhouse_is_never_linked_or_copied_into_a_build(tmp_path: Path, secret: Path) -> None:
    house = tmp_path / "house"
    house.mkdir()
    (house / "evil-1.0-py3-none-any.whl").symlink_to(secret)
    (house / "good-1.0-py3-none-any.whl").write_bytes(b"wheel")
    context = tmp_path / "context"
    context.mkdir()
    with pytest.raises(BuildError, match="not a regular file"):
        link_or_copy(house / "evil-1.0-py3-none-any.whl", context / "evil-1.0-py3-none-any.whl")
    assert not (context / "evil-1.0-py3-none-any.whl").exists()
    link_or_copy(house / "good-1.0-py3-none-any.whl", context / "good-1.0-py3-none-any.whl")
    assert os.path.samefile(context / "good-1.0-py3-none-any.whl", house / "good-1.0-py3-none-any.whl")


def test_the_wheel_server_serves_no_file_through_a_symlink(tmp_path: Path, secret: Path) -> None:
    """A block's own Dockerfile builds with the wheel server on 127.0.0.1: it may ask for any path."""
    folder = tmp_path / "wheels"
    (folder / "deps").mkdir(parents=True)
    (folder / "deps" / "good-1.0-py3-none-any.whl").write_bytes(b"wheel")
    (folder / "evil-1.0-py3-none-any.whl").symlink_to(secret)
    (folder / "outside").symlink_to(secret.parent, target_is_directory=True)
    with WheelServer(folder) as url:
        assert urllib.request.urlopen(url + "deps/good-1.0-py3-none-any.whl").read() == b"wheel"
        assert b"good-1.0" in urllib.request.urlopen(url + "deps/").read()
        for path in ("evil-1.0-py3-none-any.whl", "outside/id_rsa", "outside/", "deps/../evil-1.0-py3-none-any.whl",
                     "%2e%2e/outside/id_rsa"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(url + path)
            assert info.value.code == 404, path


def test_only_regular_files_are_taken_from_an_images_output(tmp_path: Path, secret: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a-1.0-py3-none-any.whl").write_bytes(b"a")
    assert image_outputs(out, "img") == [out / "a-1.0-py3-none-any.whl"]
    for name, plant in (("link.whl", lambda p: p.symlink_to(secret)), ("dir.whl", lambda p: p.mkdir()),
                        ("fifo.whl", lambda p: os.mkfifo(p))):
        plant(out / name)
        with pytest.raises(BuildError, match=f"img left '{name}' in its output, which is not a regular file"):
            image_outputs(out, "img")
        (out / name).rmdir() if (out / name).is_dir() and not (out / name).is_symlink() else (out / name).unlink()


@pytest.mark.docker
@pytest.mark.slow
def test_a_base_image_planting_a_symlink_in_its_output_is_refused(docker_client, base_image, tmp_path: Path,
                                                                  secret: Path) -> None:
    """A real container whose pip leaves `evil.whl -> <host file>` in the output mount: refused, nothing moved."""
    tag = f"blockkit-test/plants-symlink:{uuid.uuid4().hex[:12]}"
    dockerfile = (f"FROM {base_image}\n"
                  f"RUN printf '#!/bin/sh\\nln -s {secret} /out/evil-1.0-py3-none-any.whl\\nexit 0\\n' "
                  "> /usr/local/bin/python3 && chmod +x /usr/local/bin/python3\n")
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, network_mode="none", rm=True)
    try:
        house, subset = tmp_path / "house", tmp_path / "context" / "wheels"
        house.mkdir()
        subset.mkdir(parents=True)
        (subset / "kept-1.0-py3-none-any.whl").write_bytes(b"kept")
        requirements = tmp_path / "requirements.txt"
        requirements.write_text("evil\n")
        with pytest.raises(BuildError, match="left 'evil-1.0-py3-none-any.whl' in its output, which is not a regular"):
            complete_in_image(requirements, subset, house, PythonTarget("3.11", "x86_64", "2.36"), tag, docker_client)
        assert sorted(p.name for p in subset.iterdir()) == ["kept-1.0-py3-none-any.whl"]
        assert not any(p.is_symlink() for p in house.rglob("*"))
    finally:
        docker_client.images.remove(tag, force=True)
