"""The image's own pip keeps the releases the host resolved for a block's requirements.

An own-Dockerfile block on the Python 3.9 base asks for unpinned `numpy` and `rasterio`. The
host's pip (another Python) resolves numpy 2.0.2 and rasterio 1.4.3 for Python 3.9 but leaves
out rasterio's `importlib-metadata; python_version < "3.10"` (it evaluates the marker for its own
Python). The wheelhouse also holds rasterio 1.2.2 from earlier Python 3.9 work. Unpinned, the
image's pip (`complete_in_image`) went back to rasterio 1.2.2, which needs no importlib-metadata,
and the image had numpy 2.0.2 beside a rasterio compiled against numpy 1.x: `import rasterio`
failed with "numpy.dtype size changed". The host's choices are constraints for the image's pip,
so the missing wheel is fetched instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from packaging.utils import parse_wheel_filename

from blockkit.contract.errors import BuildError
from blockkit.runner._wheelhouse import (
    PythonTarget,
    _check_pinned,
    chosen_pins,
    pip_platform_options,
    resolve_wheels,
    run_pip,
)

TARGET = PythonTarget(python="3.9", machine="x86_64", glibc="2.31")

_MANIFEST = {
    "_up42_specification_version": 2, "name": "pins-rasterio", "type": "processing", "tags": ["test"],
    "display_name": "pins", "description": "Writes and reads a GeoTIFF with rasterio.", "parameters": {},
    "machine": {"type": "small"},
    "input_capabilities": {"raster": {"up42_standard": {"format": "GTiff"}}},
    "output_capabilities": {"raster": {"up42_standard": {"format": "GTiff"}}},
}

# Writes a GeoTIFF and reads it back: rasterio's compiled parts work with the installed numpy.
_RUN = """
import json, numpy, rasterio
from rasterio.transform import from_origin
data = numpy.arange(16, dtype="uint16").reshape(1, 4, 4)
profile = dict(driver="GTiff", width=4, height=4, count=1, dtype="uint16", crs="EPSG:32633",
               transform=from_origin(500000, 5000000, 10, 10))
with rasterio.open("/tmp/check.tif", "w", **profile) as dst:
    dst.write(data)
with rasterio.open("/tmp/check.tif") as src:
    back = src.read()
print(json.dumps({"numpy": numpy.__version__, "rasterio": rasterio.__version__,
                  "roundtrip": bool((back == data).all())}))
"""


def _wheel_name(name: str, version: str) -> str:
    return f"{name}-{version}-py3-none-any.whl"


def test_chosen_pins_are_the_requirements_asked_for_by_name(tmp_path: Path) -> None:
    subset = tmp_path / "subset"
    subset.mkdir()
    for name, version in [("numpy", "2.0.2"), ("rasterio", "1.4.3"), ("affine", "3.0.1"),
                          ("ruamel.yaml", "0.18.6"), ("importlib_metadata", "8.7.1")]:
        (subset / _wheel_name(name.replace(".", "_"), version)).write_bytes(b"")
    (subset / "not-a-wheel.whl").write_bytes(b"")
    req = tmp_path / "requirements.txt"
    req.write_text(
        "numpy  # the array library\n"
        "rasterio[s3]>=1.3\n"
        "Ruamel.Yaml; python_version >= '3.7'\n"
        "-r other.txt\n"
        "# left out of the image by blockkit build (a development tool): pytest\n"
    )
    # Dependencies (affine, importlib-metadata) are not pinned: the image's pip may need others.
    assert chosen_pins(subset, req) == {"numpy": "2.0.2", "rasterio": "1.4.3", "ruamel-yaml": "0.18.6"}
    assert chosen_pins(subset, None) == {}


def test_a_release_other_than_the_pin_fails_the_build(tmp_path: Path) -> None:
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    (chosen / "rasterio-1.2.2-cp39-cp39-manylinux1_x86_64.whl").write_bytes(b"")
    (chosen / "numpy-2.0.2-cp39-cp39-manylinux_2_17_x86_64.manylinux2014_x86_64.whl").write_bytes(b"")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("numpy==2.0.2\nRasterio==1.4.3\nbroken==not a version\n")
    with pytest.raises(BuildError) as caught:
        _check_pinned(chosen, constraints, "blockkit-base:bullseye")
    assert "rasterio 1.2.2 instead of 1.4.3" in caught.value.message
    assert "numpy" not in caught.value.message
    constraints.write_text("numpy==2.0.2\nrasterio==1.2.2\n")
    _check_pinned(chosen, constraints, "blockkit-base:bullseye")  # as pinned: no error
    _check_pinned(chosen, None, "blockkit-base:bullseye")


@pytest.mark.slow
@pytest.mark.docker
def test_image_keeps_the_host_resolution_beside_an_older_release_in_the_wheelhouse(
    tmp_path: Path, docker_client, bullseye_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blockkit.runner import _build, _wheelhouse

    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    # Earlier Python 3.9 work left rasterio 1.2.2 (built against numpy 1.x, needs no importlib-metadata)
    # with its dependencies and numpy 1.26 in the wheelhouse.
    run_pip(["--quiet", "download", "-d", str(wheelhouse), *pip_platform_options(TARGET),
             "rasterio==1.2.2", "numpy<2"], "fetching rasterio 1.2.2")
    (old,) = wheelhouse.glob("rasterio-1.2.2-*.whl")

    block = tmp_path / "pins-rasterio"
    (block / "src").mkdir(parents=True)
    (block / "UP42Manifest.json").write_text(json.dumps(_MANIFEST))
    (block / "requirements.txt").write_text("numpy\nrasterio\n")
    (block / "src" / "run.py").write_text(_RUN)
    (block / "Dockerfile").write_text(
        "ARG BASE=blockkit-base:bullseye\nFROM $BASE\nARG manifest\nLABEL \"up42_manifest\"=$manifest\n"
        "WORKDIR /block\nCOPY requirements.txt /block\nRUN pip install -r requirements.txt\n"
        "COPY src /block/src\nCMD [\"python\", \"/block/src/run.py\"]\n"
    )
    # What the host resolves for Python 3.9 (it fills the wheelhouse as the build's resolution would).
    host = tmp_path / "host"
    resolve_wheels(["-r", str(block / "requirements.txt")], host, wheelhouse, TARGET,
                   requirements=block / "requirements.txt")
    expected = {}
    for wheel in host.glob("*.whl"):
        name, version, *_ = parse_wheel_filename(wheel.name)
        if name in {"numpy", "rasterio"}:
            expected[str(name)] = str(version)
    assert set(expected) == {"numpy", "rasterio"} and expected["rasterio"] != "1.2.2", expected

    built = _build.build_block_image(block, base_image=bullseye_image, wheelhouse=wheelhouse, client=docker_client)
    try:
        out = docker_client.containers.run(built.tag, remove=True, network_mode="none")
        got = json.loads(out.decode().strip().splitlines()[-1])
        assert got == {**expected, "roundtrip": True}, got
        assert old.is_file()  # the older release stayed beside the newer one

        (record,) = (wheelhouse / ".resolved").glob("*.json")
        resolution = json.loads(record.read_text())
        assert resolution["constraints"] == "".join(f"{n}=={v}\n" for n, v in sorted(expected.items()))
        # The marker dependency the host's pip left out was fetched for the image.
        assert any(w.startswith("importlib_metadata-") for w in resolution["wheels"]), resolution["wheels"]

        # Unchanged: the resolution on record is used, no pip runs on the host or in a container.
        calls: list[str] = []
        real_pip, real_complete = _wheelhouse.run_pip, _build.complete_in_image
        monkeypatch.setattr(_wheelhouse, "run_pip", lambda *a, **k: calls.append("pip") or real_pip(*a, **k))
        monkeypatch.setattr(_build, "complete_in_image",
                            lambda *a, **k: calls.append("image") or real_complete(*a, **k))
        again = _build.build_block_image(block, base_image=bullseye_image, wheelhouse=wheelhouse,
                                         client=docker_client, build=False)
        assert calls == [] and again.tag == built.tag and not again.rebuilt
    finally:
        docker_client.images.remove(built.tag, force=True)


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.parametrize("refused", ["requires-python", "platform-tag"])
def test_a_pinned_release_the_image_pip_refuses_is_one_clear_error(
    tmp_path: Path, docker_client, bullseye_image: str, refused: str
) -> None:
    """The host's choice cannot be installed by the image's pip: one line naming it, no older release instead."""
    from blockkit.runner._wheelhouse import complete_in_image

    from .test_wheel_resolution import _wheel

    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    _wheel(wheelhouse, "bkt-pinned", "1.0", ">=3.7", [])
    # A release the image's Python 3.9 does not take (as if the host had misjudged it).
    newer = _wheel(wheelhouse, "bkt-pinned", "2.0", ">=3.10" if refused == "requires-python" else ">=3.7", [])
    if refused == "platform-tag":
        newer = newer.rename(wheelhouse / "bkt_pinned-2.0-cp311-cp311-manylinux_2_17_x86_64.whl")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("bkt-pinned\n")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("bkt-pinned==2.0\n")
    subset = tmp_path / "subset"
    subset.mkdir()
    (subset / newer.name).write_bytes(newer.read_bytes())
    listing = sorted(p.name for p in wheelhouse.iterdir())
    with pytest.raises(BuildError) as caught:
        complete_in_image(requirements, subset, wheelhouse, TARGET, bullseye_image, docker_client,
                          constraints=constraints)
    message = caught.value.message
    assert "bkt-pinned 2.0" in message and bullseye_image in message and "\n" not in message, message
    assert [p.name for p in subset.iterdir()] == [newer.name]  # not replaced by 1.0
    assert sorted(p.name for p in wheelhouse.iterdir() if p.name != ".lock") == listing  # nothing fetched


def test_a_pre_release_for_a_newer_python_is_no_reason_for_a_downgrade_warning(tmp_path: Path) -> None:
    """pip skips 0.27.0rc1 (Requires-Python >=3.12) and would skip it anyway: only 0.19.3 counts as newer."""
    from blockkit.runner._wheelhouse import _limit_warnings, _python_limited

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("scikit-image\n")
    output = "\n".join(
        f"  Link requires a different Python (3.9 not in: '{spec}'): https://files.example/{name} "
        f"(from https://index.example/simple/scikit-image/) (requires-python:{spec})"
        for name, spec in (("scikit_image-0.27.0rc1-cp312-cp312-manylinux_2_17_x86_64.whl", ">=3.12"),
                           ("scikit_image-0.19.3-cp310-cp310-manylinux_2_17_x86_64.whl", ">=3.10")))
    limited = _python_limited(output, requirements, "3.9")
    assert limited == {"scikit-image": ("0.19.3", ">=3.10")}
    subset = tmp_path / "subset"
    subset.mkdir()
    (subset / "scikit_image-0.18.3-cp39-cp39-manylinux_2_17_x86_64.whl").write_bytes(b"")
    assert _limit_warnings(limited, subset, "3.9", requirements) == [
        "scikit-image resolves to 0.18.3, not 0.19.3: newer releases need Python >=3.10 and the target is Python 3.9 "
        "(pin the release you mean, or use a base image or interpreter with that Python)"]
