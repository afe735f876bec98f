"""`blockkit push` against a real registry (Debian's docker-registry, .ci/registry-setup.sh) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from blockkit.contract.errors import ExitCode
from tests.servers import free_port

from .blocks import make_blocks

BLOCKKIT = Path(sys.executable).parent / "blockkit"
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
])


def _blockkit(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(BLOCKKIT), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.fixture()
def registry(tmp_path: Path) -> Iterator[str]:
    """A docker-registry on a free loopback port, storing under tmp_path; yields host:port."""
    binary = shutil.which("docker-registry")
    if binary is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("CI=true but docker-registry is not installed (bash .ci/registry-setup.sh)")
        pytest.skip("docker-registry is not installed (bash .ci/registry-setup.sh)")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(yaml.safe_dump({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "registry-data")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }))
    log = (tmp_path / "registry.log").open("wb")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"docker-registry did not start: {(tmp_path / 'registry.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def manifest_digest(registry: str, repository: str, tag: str) -> str:
    request = urllib.request.Request(f"http://{registry}/v2/{repository}/manifests/{tag}", method="HEAD",
                                     headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Docker-Content-Digest"]


def remove_tags(client, names: list[str]) -> None:
    for name in names:
        try:
            client.images.remove(name, noprune=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


@pytest.mark.docker
@pytest.mark.slow
def test_push_a_workflow_then_pull_what_the_export_names(docker_client, base_image, registry, tmp_path) -> None:
    blocks = make_blocks(tmp_path / "blocks")
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"""
name: pushed
steps:
  src: {{block: {blocks['source']}}}
  up:  {{block: {blocks['upper']}}}
  up2: {{block: {blocks['upper']}, params: {{scale: 3}}}}
""")
    prefix = f"{registry}/team/eo"
    result = _blockkit("push", str(workflow), "--registry", prefix, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pushed = result.stdout.split()
    try:
        # Each image once (up and up2 share one), named as the export names it.
        assert len(pushed) == 2 and all(name.startswith(f"{prefix}/blockkit/cwl-") for name in pushed)
        exported = _blockkit("export", "cwl", str(workflow), "--registry", prefix, "-o", str(tmp_path / "app.cwl"),
                             cwd=tmp_path)
        assert exported.returncode == 0, exported.stderr
        document = yaml.safe_load((tmp_path / "app.cwl").read_text())
        pulls = {item["requirements"]["DockerRequirement"]["dockerPull"] for item in document["$graph"]
                 if item["class"] == "CommandLineTool"}
        assert pulls == set(pushed)
        # The registry holds them, with the digests push reported.
        for name in pushed:
            repository, tag = name.removeprefix(f"{registry}/").rsplit(":", 1)
            digest = manifest_digest(registry, repository, tag)
            assert f"pushed {name} ({digest})" in result.stderr
            tags = json.loads(urllib.request.urlopen(f"http://{registry}/v2/{repository}/tags/list", timeout=10).read())
            assert tags["tags"] == [tag]
        # What a cluster node does: pull by the exported name, get the very image that was built.
        local_ids = {name: docker_client.images.get(name).id for name in pushed}
        remove_tags(docker_client, pushed)
        for name in pushed:
            assert docker_client.images.pull(name).id == local_ids[name]
        # Pushing again is harmless (the registry already has every layer).
        again = _blockkit("push", str(workflow), "--registry", prefix, cwd=tmp_path)
        assert again.returncode == 0 and again.stdout.split() == pushed
    finally:
        remove_tags(docker_client, pushed)


@pytest.mark.docker
@pytest.mark.slow
def test_push_a_block_folder(docker_client, base_image, registry, tmp_path) -> None:
    blocks = make_blocks(tmp_path / "blocks")
    result = _blockkit("push", str(blocks["secretive"]), "--registry", registry, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (name,) = result.stdout.split()
    try:
        assert name.startswith(f"{registry}/blockkit/cwl-secretive:")
        repository, tag = name.removeprefix(f"{registry}/").rsplit(":", 1)
        assert manifest_digest(registry, repository, tag).startswith("sha256:")
    finally:
        remove_tags(docker_client, [name])


@pytest.mark.docker
@pytest.mark.slow
def test_an_unreachable_registry_is_one_line_and_leaves_no_tag(docker_client, base_image, tmp_path) -> None:
    blocks = make_blocks(tmp_path / "blocks")
    prefix = f"127.0.0.1:{free_port()}/nowhere"  # nothing listens there
    result = _blockkit("push", str(blocks["source"]), "--registry", prefix, cwd=tmp_path)
    assert result.returncode == int(ExitCode.API_CONNECTION_ERROR)
    errors = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(errors) == 1 and errors[0].startswith(f"[API_CONNECTION_ERROR] cannot push {prefix}/blockkit/cwl-source:")
    assert "reachable from the Docker daemon" in errors[0]
    assert not [t for image in docker_client.images.list() for t in image.tags if t.startswith(prefix)]


@pytest.mark.docker
def test_no_build_names_a_missing_image(docker_client, base_image, tmp_path) -> None:
    workflow = tmp_path / "wf.yaml"
    blocks = make_blocks(tmp_path / "blocks")
    (blocks["source"] / "src" / "extra.py").write_text("# a change no image was built for\n")
    workflow.write_text(f"name: w\nsteps:\n  src: {{block: {blocks['source']}}}\n")
    result = _blockkit("push", str(workflow), "--no-build", "--registry", "127.0.0.1:9/x", cwd=tmp_path)
    assert result.returncode == int(ExitCode.WRONG_INPUT_ERROR)
    assert "is not on this Docker daemon" in result.stderr and "build it first" in result.stderr


@pytest.mark.slow
def test_registry_credentials_are_refused_without_being_printed(tmp_path) -> None:
    blocks = make_blocks(tmp_path / "blocks")
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"name: w\nsteps:\n  src: {{block: {blocks['source']}}}\n")
    registry = "robot:hunter2-do-not-print@registry.example.org/eo"
    for command in (["push", str(workflow)], ["export", "cwl", str(workflow), "--no-build", "--image", "src=x:1"]):
        result = _blockkit(*command, "--registry", registry, cwd=tmp_path, timeout=60)
        assert "hunter2" not in result.stderr + result.stdout
        assert result.returncode == int(ExitCode.INPUT_PARAMETERS_ERROR), result.stderr
        assert "must not hold credentials" in result.stderr and "docker login" in result.stderr


@pytest.mark.parametrize("value, words", [
    ("https://registry.example.org/eo", "without a scheme"),
    ("registry.example.org/EO", "is not host[:port][/path]"),
    ("bad host/eo", "is not host[:port][/path]"),
    ("registry.example.org/../eo", "is not host[:port][/path]"),
])
def test_a_malformed_registry_fails_before_any_build(tmp_path, value, words) -> None:
    started = time.monotonic()
    result = _blockkit("push", str(tmp_path / "missing.yaml"), "--registry", value, cwd=tmp_path, timeout=60)
    assert result.returncode == int(ExitCode.INPUT_PARAMETERS_ERROR)
    assert words in result.stderr.splitlines()[0]
    assert time.monotonic() - started < 30
