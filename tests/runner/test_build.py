"""`build_block_image` and `blockkit build`: content-hashed, cached, offline images of real blocks."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from blockkit.contract.errors import ExitCode
from blockkit.runner._build import (
    HASH_LABEL,
    MANIFEST_LABEL,
    BaseImageMissingError,
    BuildError,
    BuiltImage,
    block_content_hash,
    build_block_image,
)

RUN_PY = """\
import json, os
params = json.loads(os.environ.get("UP42_TASK_PARAMETERS") or "{}")
out = os.environ.get("BLOCKKIT_OUTPUT_DIR", "/tmp/output")
with open(os.path.join(out, "data.json"), "w") as handle:
    json.dump({"type": "FeatureCollection", "features": [], "params": params}, handle)
"""


@pytest.fixture(autouse=True)
def frozen_blockkit_source(monkeypatch):
    """Hash blockkit's sources once per test: edits elsewhere in the tree must not move tags mid-test."""
    from blockkit.runner import _image_names as image_names

    real = image_names.blockkit_source_hash
    memo: dict[object, str] = {}
    monkeypatch.setattr(image_names, "blockkit_source_hash", lambda root: memo.setdefault(root, real(root)))


@pytest.fixture
def build(request):
    """build_block_image, removing the (test-unique) images it made when the test ends."""
    tags: list[str] = []

    def _build(block: Path, **kwargs) -> BuiltImage:
        built = build_block_image(block, **kwargs)
        tags.append(built.tag)
        return built

    yield _build
    if tags:
        client = request.getfixturevalue("docker_client")
        for tag in dict.fromkeys(reversed(tags)):
            try:
                client.images.remove(tag)
            except Exception:  # noqa: BLE001 - in use or already gone: leave it
                pass


def make_block(root: Path, name: str = "tiny-block") -> Path:
    """A UP42-style block; a nonce file makes its content (and tag) unique to this test."""
    block = root / name
    (block / "src").mkdir(parents=True)
    (block / "src" / "run.py").write_text(RUN_PY)
    (block / "src" / "nonce.txt").write_text(uuid.uuid4().hex)
    manifest = {
        "_up42_specification_version": 2,
        "name": name,
        "type": "processing",
        "tags": ["test"],
        "display_name": "Tiny block",
        "description": "Writes an empty FeatureCollection.",
        "parameters": {"size": {"type": "integer", "default": 3}},
        "machine": {"type": "small"},
        "input_capabilities": {},
        "output_capabilities": {},
    }
    (block / "UP42Manifest.json").write_text(json.dumps(manifest))
    return block


def manifest_of(block: Path) -> dict:
    return json.loads((block / "UP42Manifest.json").read_text())


@pytest.mark.docker
def test_build_is_cached_and_a_change_gives_a_new_tag(build, docker_client, base_image, tmp_path):
    block = make_block(tmp_path)
    first = build(block, base_image=base_image, client=docker_client)
    assert first.rebuilt
    assert first.tag == f"blockkit/tiny-block:{first.content_hash[:12]}"
    assert docker_client.images.get(first.tag).id == first.image_id

    second = build(block, base_image=base_image, client=docker_client)
    assert not second.rebuilt
    assert (second.tag, second.image_id) == (first.tag, first.image_id)


@pytest.mark.docker
def test_an_up_to_date_check_links_no_wheel_and_gives_the_linked_tag(build, docker_client, base_image, tmp_path,
                                                                     monkeypatch):
    """The usual check hashes the recorded wheels in place; the tag is the one linking them gives."""
    from blockkit.runner import _wheelhouse
    from blockkit.runner._wheelhouse import DIGESTS, resolve_wheelhouse

    block = make_block(tmp_path)
    first = build(block, base_image=base_image, client=docker_client)
    from blockkit.runner._image_names import blockkit_source_root

    record = resolve_wheelhouse(None, blockkit_source_root()) / DIGESTS
    before = record.stat().st_mtime_ns
    links: list[object] = []
    real = _wheelhouse.link_or_copy
    monkeypatch.setattr(_wheelhouse, "link_or_copy", lambda *a, **k: (links.append(a), real(*a, **k))[1])
    checked = build(block, base_image=base_image, client=docker_client)
    assert (checked.tag, checked.image_id, checked.rebuilt) == (first.tag, first.image_id, False)
    assert links == [] and record.stat().st_mtime_ns == before
    monkeypatch.setattr(_wheelhouse, "recorded_wheels", lambda *a, **k: None)  # the linking way
    linked = build(block, base_image=base_image, client=docker_client)
    assert (linked.tag, linked.rebuilt) == (first.tag, False) and len(links) > 0

    # Caches and bytecode do not count as content.
    (block / "src" / "__pycache__").mkdir()
    (block / "src" / "__pycache__" / "run.cpython-311.pyc").write_bytes(b"\0junk")
    (block / ".pytest_cache").mkdir()
    assert build(block, base_image=base_image, client=docker_client).tag == first.tag

    (block / "src" / "run.py").write_text(RUN_PY + "print('changed')\n")
    third = build(block, base_image=base_image, client=docker_client)
    assert third.rebuilt
    assert third.tag != first.tag
    assert third.image_id != first.image_id


@pytest.mark.docker
def test_image_labels_hold_the_manifest_and_hash(build, docker_client, base_image, tmp_path):
    block = make_block(tmp_path)
    built = build(block, base_image=base_image, client=docker_client)
    labels = docker_client.images.get(built.tag).labels

    assert json.loads(labels[MANIFEST_LABEL]) == manifest_of(block)
    assert labels[HASH_LABEL] == built.content_hash


@pytest.mark.docker
def test_built_image_runs_the_block_as_non_root_offline(build, docker_client, base_image, tmp_path):
    block = make_block(tmp_path)
    built = build(block, base_image=base_image, client=docker_client)
    out = docker_client.containers.run(
        built.tag,
        ["sh", "-c", "id -u; echo $BLOCKKIT_INPUT_DIR; python -c 'import blockkit, sys; print(sys.prefix)'; pwd"],
        remove=True,
        network_mode="none",
    ).decode().split()
    uid, input_dir, prefix, workdir = out
    assert int(uid) != 0
    assert input_dir == "/tmp/input"
    assert prefix == "/opt/venv"
    assert workdir == "/block"
    assert "python" in " ".join(docker_client.images.get(built.tag).attrs["Config"]["Cmd"])


@pytest.mark.docker
def test_block_images_hold_the_sdk_without_the_runner(build, docker_client, base_image, tmp_path):
    """No boto3 (rasterio imports it when installed: 0.15 s of every block start), no CLI packages.

    `blockkit` inside the image says in one line what to install instead of a traceback.
    """
    block = make_block(tmp_path)
    built = build(block, base_image=base_image, client=docker_client)
    probe = ("import importlib.util as u; "
             "print(' '.join(m for m in ('boto3', 'typer', 'rich', 'yaml', 'cryptography', 'numpy', 'rasterio') "
             "if u.find_spec(m)))")
    out = docker_client.containers.run(built.tag, ["python", "-c", probe], remove=True, network_mode="none")
    assert out.decode().split() == ["numpy", "rasterio"]
    container = docker_client.containers.run(built.tag, ["blockkit", "run", "."], detach=True, network_mode="none")
    try:
        code = container.wait(timeout=60)["StatusCode"]
        err = container.logs(stdout=False, stderr=True).decode()
    finally:
        container.remove(force=True)
    assert code == int(ExitCode.WRONG_INPUT_ERROR), err
    assert err.strip().splitlines() == [
        "[WRONG_INPUT_ERROR] the blockkit command line needs the runner (typer is not installed): "
        "pip install 'blockkit-eo[runner]'"]


@pytest.mark.docker
def test_second_build_works_without_a_package_index(build, docker_client, base_image, tmp_path, monkeypatch):
    block = make_block(tmp_path)
    (block / "requirements.txt").write_text("affine\n")  # already a blockkit dependency: in the wheelhouse
    build(block, base_image=base_image, client=docker_client)

    # A dead index: anything not already in the wheelhouse would fail to resolve.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    (block / "src" / "run.py").write_text(RUN_PY + "# offline change\n")
    rebuilt = build(block, base_image=base_image, client=docker_client)
    assert rebuilt.rebuilt


@pytest.mark.docker
def test_wheels_are_chosen_for_the_image_python_not_the_host(build, docker_client, base_image, tmp_path, monkeypatch):
    from blockkit.runner import _wheelhouse as wheelhouse

    # As on a host whose Python differs from the image's: binary wheels for the image's platform.
    monkeypatch.setattr(wheelhouse, "host_matches", lambda target: False)
    block = make_block(tmp_path)
    built = build(block, base_image=base_image, client=docker_client)
    out = docker_client.containers.run(
        built.tag, ["python", "-c", "import blockkit, numpy, rasterio; print('ok')"], remove=True, network_mode="none"
    )
    assert out.decode().strip() == "ok"


@pytest.mark.docker
def test_missing_base_image_says_how_to_make_it(docker_client, tmp_path):
    block = make_block(tmp_path)
    with pytest.raises(BaseImageMissingError, match=r"BLOCKKIT_BASE_IMAGE=blockkit-base:no-such-tag bash \.ci/docker-setup\.sh"):
        build_block_image(block, base_image="blockkit-base:no-such-tag", client=docker_client)


def test_the_command_for_a_missing_base_image_makes_that_image() -> None:
    """docker-setup.sh names its image blockkit-base:<suite>: the bullseye command must not make (or say) bookworm."""
    from blockkit.runner._build import setup_command

    assert setup_command("blockkit-base:bookworm") == "sudo bash .ci/docker-setup.sh"
    assert setup_command("blockkit-base:bullseye") == "sudo BLOCKKIT_BASE_SUITE=bullseye bash .ci/docker-setup.sh"
    assert setup_command("my base") == "sudo BLOCKKIT_BASE_IMAGE='my base' bash .ci/docker-setup.sh (Debian bookworm)"
    script = (Path(__file__).parents[2] / ".ci" / "docker-setup.sh").read_text()
    assert 'BASE_IMAGE="${BLOCKKIT_BASE_IMAGE:-blockkit-base:$SUITE}"' in script
    assert script.index("SUITE=") < script.index("BASE_IMAGE=")


@pytest.fixture
def broken_base(docker_client, base_image):
    """A base image whose Python lacks the venv module, so the Dockerfile's first RUN fails."""
    container = docker_client.containers.run(
        base_image,
        ["python3", "-c", "import os, shutil, venv; shutil.rmtree(os.path.dirname(venv.__file__))"],
        detach=True,
        network_mode="none",
    )
    try:
        container.wait(timeout=60)
        tag = f"blockkit-test/broken-base:{uuid.uuid4().hex[:8]}"
        repository, version = tag.split(":")
        container.commit(repository=repository, tag=version)
    finally:
        container.remove(force=True)
    broken_id = docker_client.images.get(tag).id
    yield tag
    _remove_image_tree(docker_client, broken_id)


def _remove_image_tree(client, image_id: str) -> None:
    """Remove an image and the layers a failed build left on top of it."""
    for child in client.images.list(all=True):
        if child.attrs.get("Parent") == image_id:
            _remove_image_tree(client, child.id)
    try:
        client.images.remove(image_id, force=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


@pytest.mark.docker
def test_build_failure_reports_the_end_of_the_build_log(docker_client, broken_base, tmp_path):
    block = make_block(tmp_path)
    with pytest.raises(BuildError) as info:
        build_block_image(block, base_image=broken_base, client=docker_client)
    error = info.value
    assert "\n" not in error.headline()
    assert "failed" in error.headline()
    assert "venv" in error.details()


def test_content_hash_depends_on_block_base_and_ignores_caches(tmp_path):
    block = make_block(tmp_path)
    dockerfile = Path(__file__).resolve().parents[2] / "Dockerfile.base"
    kwargs = dict(dockerfile=dockerfile, source_root=None)
    # source_root=None hashes the installed version of blockkit: stable within the test.
    one = block_content_hash(block, base_image_id="sha256:a", **kwargs)
    assert one == block_content_hash(block, base_image_id="sha256:a", **kwargs)
    assert one != block_content_hash(block, base_image_id="sha256:b", **kwargs)

    (block / "src" / "__pycache__").mkdir()
    (block / "src" / "__pycache__" / "x.pyc").write_bytes(b"0")
    assert one == block_content_hash(block, base_image_id="sha256:a", **kwargs)

    (block / "requirements.txt").write_text("affine\n")
    assert one != block_content_hash(block, base_image_id="sha256:a", **kwargs)


@pytest.mark.parametrize("name, repo", [
    ("ndvi", "ndvi"),
    ("My Block", "my-block"),
    ("S2--Superresolution__v2", "s2-superresolution-v2"),
    ("..hidden..", "hidden"),
    ("ÄÖÜ", "block"),
    ("", "block"),
    ("a/b:c@d", "a-b-c-d"),
])
def test_repo_name_makes_any_manifest_name_a_docker_repository(name: str, repo: str) -> None:
    from blockkit.runner._image_names import repo_name

    assert repo_name(name) == repo


def test_image_tag_is_the_repository_and_the_short_content_hash() -> None:
    from blockkit.runner._image_names import image_tag

    assert image_tag("My Block", "0123456789abcdef" * 4) == "blockkit/my-block:0123456789ab"


def _cli() -> typer.Typer:
    from blockkit.cli._build_cmd import register

    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:
        """Keep `build` a subcommand even when it is the only one."""

    return app


@pytest.mark.docker
def test_cli_build_prints_tag_and_cache_state(docker_client, base_image, tmp_path):
    block = make_block(tmp_path)
    runner = CliRunner()
    first = runner.invoke(_cli(), ["build", str(block), "--base-image", base_image])
    assert first.exit_code == 0, first.output
    assert "blockkit/tiny-block:" in first.output and "built" in first.output

    second = runner.invoke(_cli(), ["build", str(block), "--base-image", base_image])
    assert second.exit_code == 0
    assert "cached" in second.output
    docker_client.images.remove(first.output.split()[0])


@pytest.mark.docker
def test_cli_build_prune_removes_older_images_of_the_block_only(build, docker_client, base_image, tmp_path):
    block = make_block(tmp_path, name="prune-block")
    other = make_block(tmp_path / "other", name="prune-other")
    # Another folder whose block has the same name: same repository, not this block's images.
    namesake = make_block(tmp_path / "namesake", name="prune-block")
    (namesake / "src" / "run.py").write_text(RUN_PY + "print('namesake')\n")
    first = build(block, base_image=base_image, client=docker_client)
    unrelated = build(other, base_image=base_image, client=docker_client)
    twin = build(namesake, base_image=base_image, client=docker_client)
    (block / "src" / "run.py").write_text(RUN_PY + "print('v2')\n")
    second = build(block, base_image=base_image, client=docker_client)
    (block / "src" / "run.py").write_text(RUN_PY + "print('v3')\n")
    in_use = docker_client.containers.create(second.tag, ["true"], network_mode="none")
    try:
        result = CliRunner().invoke(_cli(), ["build", str(block), "--base-image", base_image, "--prune"])
        assert result.exit_code == 0, result.output
        tags = {t for image in docker_client.images.list(name="blockkit/prune-block") for t in image.tags}
        third = result.output.split()[0]
        assert third in tags and first.tag not in tags
        assert f"removed older image {first.tag}" in result.output
        assert second.tag in tags and f"kept older image {second.tag}" in result.output  # a container uses it
        assert docker_client.images.get(unrelated.tag)  # another block's image is untouched
        assert twin.tag in tags  # the namesake folder's image too
    finally:
        in_use.remove(force=True)
        docker_client.images.remove(third)


def test_cli_errors_are_one_line_and_non_zero(tmp_path):
    result = CliRunner().invoke(_cli(), ["build", str(tmp_path / "nowhere")])
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[0].startswith("[")
    assert "Traceback" not in result.output


def _repacked(wheel: Path, dest: Path) -> None:
    """The same wheel with one more file: other bytes, still installable."""
    import zipfile

    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(dest, "w") as out:
        for item in src.infolist():
            out.writestr(item, src.read(item.filename))
        out.writestr("affine/_blockkit_test_marker.txt", "repacked\n")


@pytest.mark.docker
@pytest.mark.slow
def test_tag_covers_the_wheels(build, docker_client, base_image, tmp_path):
    import shutil
    import subprocess

    from blockkit.runner._build import blockkit_source_root, resolve_wheelhouse

    shared = resolve_wheelhouse(None, blockkit_source_root())
    block = make_block(tmp_path)
    (block / "requirements.txt").write_text("affine\npytest\n")
    first = build(block, base_image=base_image, client=docker_client)  # fills the shared wheelhouse
    assert any("development tools left out: pytest" in w for w in first.warnings)
    wheelhouse = tmp_path / "wheelhouse"
    subprocess.run(["cp", "-al", str(shared), str(wheelhouse)], check=True)
    one = build(block, base_image=base_image, client=docker_client, wheelhouse=wheelhouse)
    assert one.tag == first.tag  # same wheels, same tag
    affine = next(wheelhouse.glob("affine-*.whl"))
    repacked = tmp_path / affine.name
    _repacked(affine, repacked)
    affine.unlink()  # a hard link: the shared wheelhouse keeps its copy
    shutil.move(repacked, affine)
    two = build(block, base_image=base_image, client=docker_client, wheelhouse=wheelhouse)
    assert two.rebuilt and two.tag != one.tag
    out = docker_client.containers.run(
        two.tag, ["sh", "-c", "python -c 'import affine, os; print(os.path.exists(os.path.join(os.path.dirname(affine.__file__), \"_blockkit_test_marker.txt\")))'; pip list 2>/dev/null | grep -ci pytest; true"],
        remove=True, network_mode="none").decode().split()
    assert out == ["True", "0"]  # the new wheel is in the image; the dev tool is not


@pytest.mark.docker
@pytest.mark.slow
def test_user_root_image_writes_a_root_owned_output_folder(build, docker_client, base_image, tmp_path):
    from docker.types import Mount

    block = make_block(tmp_path)
    images = {user: build(block, base_image=base_image, client=docker_client, user=user) for user in ("1000", "root")}
    assert images["1000"].tag != images["root"].tag
    results = {}
    for user, built in images.items():
        out = tmp_path / f"out-{user}"
        out.mkdir(mode=0o755)  # root-owned, 755: as the platform mounts it
        container = docker_client.containers.run(
            built.tag, detach=True, network_mode="none",
            mounts=[Mount("/tmp/output", str(out), type="bind")],
        )
        try:
            results[user] = (container.wait(timeout=120)["StatusCode"], (out / "data.json").is_file())
        finally:
            container.remove(force=True)
    assert results["root"] == (0, True)
    assert results["1000"][0] != 0 and not results["1000"][1]  # why `--user root` exists (docs/up42.md)


def test_build_args_only_for_own_dockerfiles_and_user_checked(tmp_path):
    block = make_block(tmp_path)
    with pytest.raises(BuildError, match="applies to a block's own Dockerfile"):
        build_block_image(block, build_args={"BASE": "x"}, client=object())
    with pytest.raises(BuildError, match="--user must be one of"):
        build_block_image(block, user="0; rm -rf /", client=object())


@pytest.mark.docker
def test_tag_only_matches_the_built_tag_and_builds_nothing(build, docker_client, base_image, tmp_path):
    block = make_block(tmp_path)
    (block / "requirements.txt").write_text("affine\n")
    expected = build_block_image(block, base_image=base_image, client=docker_client, build=False)
    assert expected.image_id == "" and not expected.rebuilt
    with pytest.raises(Exception):
        docker_client.images.get(expected.tag)
    built = build(block, base_image=base_image, client=docker_client)
    assert built.tag == expected.tag
    again = build_block_image(block, base_image=base_image, client=docker_client, build=False)
    assert (again.tag, again.image_id) == (built.tag, built.image_id)


@pytest.mark.docker
def test_the_base_image_probe_runs_once_per_image_not_once_per_run(docker_client, base_image, tmp_path, monkeypatch):
    """A `blockkit run` of built images starts no probe container: the answer is kept per image id."""
    from blockkit.runner import _build

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(_build, "_TARGET_CACHE", {})
    from docker.models.containers import ContainerCollection

    runs: list[object] = []
    real_run = ContainerCollection.run

    def counting_run(self, *args, **kwargs):
        runs.append(args)
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(ContainerCollection, "run", counting_run)
    first = _build._base_target(docker_client, base_image)
    assert len(runs) == 1 and first.python.count(".") == 1
    image_id = docker_client.images.get(base_image).id
    record = _build._target_record(image_id)
    assert json.loads(record.read_text()) == {"python": first.python, "machine": first.machine, "glibc": first.glibc}

    monkeypatch.setattr(_build, "_TARGET_CACHE", {})  # as a new `blockkit run` process
    assert _build._base_target(docker_client, base_image) == first
    assert len(runs) == 1

    # A damaged or doctored record is not believed: the image is asked again and the record rewritten.
    for bad in ('{"python": "3.11; rm -rf /", "machine": "x86_64", "glibc": "2.36"}', "not json", '{"python": 3}'):
        record.write_text(bad)
        monkeypatch.setattr(_build, "_TARGET_CACHE", {})
        assert _build._base_target(docker_client, base_image) == first
    assert len(runs) == 4
    assert json.loads(record.read_text())["python"] == first.python


@pytest.mark.slow
@pytest.mark.docker
def test_a_workflows_images_are_prepared_at_once_and_fail_in_step_order(docker_client, base_image, tmp_path):
    """Blocks are checked in parallel; the first failing block in step order is the error, nothing runs."""
    from blockkit.runner._plan import plan_workflow
    from blockkit.runner._workflow import load_workflow
    from blockkit.runner._docker_engine import DockerEngine

    from .blocks import SOURCE, UPPER, write_block

    blocks = tmp_path / "blocks"
    source = write_block(blocks, "source", kind="data", source=SOURCE,
                         params={"count": {"type": "integer", "default": 1}, "text": {"type": "string", "default": "x"}})
    for name, code in (("broken-one", 3), ("broken-two", 4)):
        folder = write_block(blocks, name, kind="processing", source=UPPER, params={})
        (folder / "Dockerfile").write_text(f"FROM {base_image}\nARG manifest\nLABEL \"up42_manifest\"=$manifest\n"
                                           f"RUN echo {name} fails; exit {code}\n")
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"name: broken\nsteps:\n  a: {{block: {source}}}\n  b: {{block: {blocks / 'broken-one'}}}\n"
                  f"  c: {{block: {blocks / 'broken-two'}}}\n")
    said: list[str] = []
    with pytest.raises(BuildError) as info:
        DockerEngine(docker_client).prepare_images(plan_workflow(load_workflow(wf)), said.append)
    assert "broken-one fails" in info.value.message, info.value.message
    assert len(said) == 1 and "for step 'a'" in said[0], said
