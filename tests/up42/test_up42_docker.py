"""UP42-style blocks (own Dockerfile, no blockkit inside) built by `blockkit build` and run by `blockkit run`
on Docker, chained after the example synthetic-scene block."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from blockkit.contract.errors import ExitCode

pytestmark = [pytest.mark.docker, pytest.mark.slow]

BLOCKKIT = Path(sys.executable).with_name("blockkit")


def _cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BLOCKKIT), *args], capture_output=True, text=True, timeout=timeout)


def _chain(tmp_path: Path, blocks: dict[str, Path], *names: str) -> Path:
    wf = tmp_path / "chain.yaml"
    lines = ["name: up42-chain", "steps:", f"  scene: {{block: {blocks['synthetic-scene']}, params: {{size: 96, limit: 2}}}}"]
    lines += [f"  {name}: {{block: {blocks[name]}}}" for name in names]
    wf.write_text("\n".join(lines) + "\n")
    return wf


def _remove_images(docker_client, block: Path) -> None:
    for image in docker_client.images.list(filters={"label": f"blockkit.block_dir={block.resolve()}"}):
        try:
            docker_client.images.remove(image.id, force=True)
        except Exception:  # noqa: BLE001 - in use or gone
            pass


def test_up42_blocks_build_from_their_dockerfile_and_chain_after_synthetic_scene(
    tmp_path: Path, docker_client, bullseye_image, up42_blocks
) -> None:
    try:
        built = _cli("build", str(up42_blocks["up42-scale"]))
        assert built.returncode == 0, built.stderr
        assert "from Dockerfile" in built.stdout  # built, or up to date: the tag is the content
        assert "development tools left out: pytest, mypy, black" in built.stderr
        tag = built.stdout.split()[0]
        image = docker_client.images.get(tag)
        assert json.loads(image.labels["up42_manifest"]) == json.loads((up42_blocks["up42-scale"] / "UP42Manifest.json").read_text())
        listing = docker_client.containers.run(
            tag, ["sh", "-c", "python --version; pip list 2>/dev/null; python -c 'import blockkit' 2>&1 | tail -1"],
            remove=True, network_mode="none").decode()
        assert "Python 3.9" in listing and "rasterio" in listing
        assert "pytest" not in listing and "mypy" not in listing  # dev tools stay out
        assert "No module named 'blockkit'" in listing  # the runner never needs blockkit inside

        again = _cli("build", str(up42_blocks["up42-scale"]))
        assert again.returncode == 0 and "up to date (cached)" in again.stdout and again.stdout.split()[0] == tag

        wf = _chain(tmp_path, up42_blocks, "up42-scale", "up42-main-entry")
        done = _cli("run", str(wf), "-e", "docker", "--runs-dir", str(tmp_path / "runs"))
        assert done.returncode == 0, done.stderr
        # xxxlarge (16 CPUs) is capped to the daemon's CPUs with a warning, not refused.
        assert "capped to" in done.stderr and "xxxlarge" in done.stderr
        run_dir = next((tmp_path / "runs").glob("*-up42-chain-*"))
        scene = json.loads((run_dir / "steps/scene/output/data.json").read_text())["features"]
        scaled = json.loads((run_dir / "steps/up42-scale/output/data.json").read_text())["features"]
        labelled = json.loads((run_dir / "steps/up42-main-entry/output/data.json").read_text())["features"]
        assert len(scene) == len(scaled) == len(labelled) == 2
        for before, after, last in zip(scene, scaled, labelled):
            assert after["bbox"] == before["bbox"] == last["bbox"]  # the blocks read the input's bbox
            with rasterio.open(run_dir / "steps/scene/output" / before["properties"]["up42.data_path"]) as src:
                original = src.read().astype("float32")
            with rasterio.open(run_dir / "steps/up42-scale/output" / after["properties"]["up42.data_path"]) as src:
                assert np.array_equal(src.read(), original * 2)  # required+default: factor 2 filled in
            assert last["properties"]["label"] == "labelled by a UP42-style block"  # asset read from /block
    finally:
        for name in ("up42-scale", "up42-main-entry"):
            _remove_images(docker_client, up42_blocks[name])


def test_block_that_exits_0_without_data_json_is_no_output_error(tmp_path: Path, docker_client, bullseye_image, up42_blocks) -> None:
    try:
        wf = _chain(tmp_path, up42_blocks, "up42-nodata")
        done = _cli("run", str(wf), "-e", "docker", "--runs-dir", str(tmp_path / "runs"))
        assert done.returncode == int(ExitCode.NO_OUTPUT_ERROR), done.stderr
        assert "[NO_OUTPUT_ERROR]" in done.stderr and "wrote no data.json" in done.stderr
        again = _cli("run", str(wf), "-e", "docker", "--runs-dir", str(tmp_path / "runs"))
        assert again.returncode == int(ExitCode.NO_OUTPUT_ERROR)  # never cached as a success
        assert "up42-nodata unchanged" not in again.stderr
    finally:
        _remove_images(docker_client, up42_blocks["up42-nodata"])


def test_own_dockerfile_without_the_manifest_label_is_refused(tmp_path: Path, docker_client, bullseye_image, up42_blocks) -> None:
    block = up42_blocks["up42-main-entry"]
    text = (block / "Dockerfile").read_text().replace('LABEL "up42_manifest"=$manifest\n', "")
    (block / "Dockerfile").write_text(text)
    done = _cli("build", str(block))
    assert done.returncode == int(ExitCode.UNEXPECTED_ERROR)
    assert "has no up42_manifest label" in done.stderr and "ARG manifest" in done.stderr
    assert not docker_client.images.list(filters={"label": f"blockkit.block_dir={block.resolve()}"})


def test_missing_from_image_says_how_to_build_offline(tmp_path: Path, docker_client, bullseye_image, up42_blocks) -> None:
    block = up42_blocks["up42-main-entry"]
    (block / "Dockerfile").write_text((block / "Dockerfile").read_text().replace(
        "ARG BASE=blockkit-base:bullseye\nFROM ${BASE}", "FROM up42/up42-base-py37:latest"))
    done = _cli("build", str(block))
    assert done.returncode != 0
    assert "FROM up42/up42-base-py37:latest is not a local image" in done.stderr
    assert f"blockkit build {block} --base-image blockkit-base:bullseye" in done.stderr
    # `blockkit run` has no --base-image: it names the step and the build to run once.
    wf = _chain(tmp_path, up42_blocks, "up42-main-entry")
    done = _cli("run", str(wf), "-e", "docker", "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    headline = next(line for line in done.stderr.splitlines() if line.startswith("["))
    assert "step 'up42-main-entry': " in headline and "FROM up42/up42-base-py37:latest is not a local image" in headline
    assert f"blockkit build {block} --base-image" in done.stderr and "then run again" in done.stderr
    try:
        # As for UP42's own blocks: the literal FROM replaced by a local base; `blockkit run` reuses that choice.
        built = _cli("build", str(block), "--base-image", bullseye_image)
        assert built.returncode == 0, built.stderr
        done = _cli("run", str(wf), "-e", "docker", "--runs-dir", str(tmp_path / "runs"))
        assert done.returncode == 0, done.stderr
        assert f"image {built.stdout.split()[0]} (up to date)" in done.stderr
        # --build-arg BASE= works for Dockerfiles that take their base from an ARG.
        bad = _cli("build", str(up42_blocks["up42-nodata"]), "--build-arg", "BASE=blockkit-base:no-such")
        assert bad.returncode != 0 and "FROM blockkit-base:no-such is not a local image" in bad.stderr
        bad_arg = _cli("build", str(up42_blocks["up42-nodata"]), "--build-arg", "NOEQUALS")
        assert bad_arg.returncode != 0 and bad_arg.stderr.count("\n") == 1
    finally:
        _remove_images(docker_client, block)


def test_blockutils_1_2_4_block_on_python_3_9_runs_after_synthetic_scene(
    tmp_path: Path, docker_client, bullseye_image, up42_blocks
) -> None:
    """up42-blockutils 1.2.4 (Requires-Python <3.10) from the index, via the host wheelhouse, in CI."""
    block = up42_blocks["up42-blockutils"]
    try:
        built = _cli("build", str(block), timeout=3600)
        assert built.returncode == 0, built.stderr
        tag = built.stdout.split()[0]
        version = docker_client.containers.run(
            tag, ["python", "-c", "import importlib.metadata as m; print(m.version('up42-blockutils'))"],
            remove=True, network_mode="none").decode().strip()
        assert version == "1.2.4"
        wf = _chain(tmp_path, up42_blocks, "up42-blockutils")
        done = _cli("run", str(wf), "-e", "docker", "--runs-dir", str(tmp_path / "runs"), "--json")
        assert done.returncode == 0, done.stderr
        run_dir = Path(json.loads(done.stdout)["run_dir"])
        features = json.loads((run_dir / "steps/up42-blockutils/output/data.json").read_text())["features"]
        assert len(features) == 2 and all(f["properties"]["stats:band"] == 1 for f in features)
        assert all(len(f["bbox"]) == 4 and f["properties"]["stats:mean"] > 0 for f in features)
    finally:
        _remove_images(docker_client, block)
