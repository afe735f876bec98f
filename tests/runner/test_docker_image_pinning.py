"""A docker step runs the image the run prepared, by id: moving its tag meanwhile changes nothing.

The run resolves every step's image once, before any step starts, and its cache keys and
run.json name that image's id. A tag moved later (a rebuild, `docker tag` by someone else)
must not make a later step or part run another image under the same record.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from blockkit.contract.errors import ImageMissingError
from blockkit.runner._docker_engine import DockerEngine
from blockkit.runner._engine import StepSpec
from blockkit.runner._session import RunRequest, run_request
from tests.security.engine_blocks import wait_for

pytestmark = pytest.mark.docker

# Says which image it runs in (/which, absent in the first) after `sleep` seconds.
WHICH_RUN_PY = r'''
import json, os, time

params = json.loads(os.environ.get("UP42_TASK_PARAMETERS") or "{}")
time.sleep(float(params.get("sleep") or 0))
which = open("/which").read().strip() if os.path.exists("/which") else "A"
out = os.environ.get("BLOCKKIT_OUTPUT_DIR", "/tmp/output")
feature = {"type": "Feature", "id": "which", "geometry": None, "properties": {"which": which}}
with open(os.path.join(out, "data.json"), "w") as handle:
    json.dump({"type": "FeatureCollection", "features": [feature]}, handle)
'''


@pytest.fixture(scope="module")
def images(docker_client, base_image, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(id of image A, id of image B): B is A with /which saying "B"."""
    from blockkit.runner._build import build_block_image

    block = tmp_path_factory.mktemp("which") / "block"
    (block / "src").mkdir(parents=True)
    (block / "src" / "run.py").write_text(WHICH_RUN_PY)
    (block / "UP42Manifest.json").write_text(json.dumps({
        "_up42_specification_version": 2, "name": "which-image", "type": "processing",
        "parameters": {"sleep": {"type": "number"}}, "machine": {"type": "small"},
        "input_capabilities": {"misc": {"up42_standard": {}}},
        "output_capabilities": {"misc": {"up42_standard": {}}}}))
    first = build_block_image(block, base_image=base_image, client=docker_client)
    container = docker_client.containers.run(first.image_id, ["sh", "-c", "echo B > /which"], entrypoint=[],
                                             user="root", detach=True, network_mode="none")
    try:
        assert container.wait()["StatusCode"] == 0
        config = docker_client.images.get(first.image_id).attrs["Config"]
        # A commit keeps the container's command and user: give back the image's own.
        # Tagged, so that removing a test's own tag never removes B itself.
        second = container.commit(repository="blockkit-test/which-b", tag=uuid.uuid4().hex[:8], changes=[
            f"CMD {json.dumps(config['Cmd'])}", f"ENTRYPOINT {json.dumps(config['Entrypoint'] or [])}",
            f"USER {config['User'] or 'root'}"])
    finally:
        container.remove(force=True)
    yield first.image_id, str(second.id)
    docker_client.images.remove(str(second.id), force=True)


def _tag(docker_client, image_id: str, tag: str) -> None:
    repository, name = tag.rsplit(":", 1)
    assert docker_client.images.get(image_id).tag(repository, name)


def _which(output_dir: Path) -> str:
    return json.loads((output_dir / "data.json").read_text())["features"][0]["properties"]["which"]


def test_the_engine_runs_the_prepared_id_not_where_the_tag_points_now(docker_client, images, tmp_path) -> None:
    a, b = images
    tag = f"blockkit-test/moved:{uuid.uuid4().hex[:8]}"
    _tag(docker_client, b, tag)  # the tag moved to B after the run resolved it to A
    try:
        (tmp_path / "input").mkdir()
        (tmp_path / "input" / "data.json").write_text('{"type": "FeatureCollection", "features": []}')
        spec = StepSpec(name="pinned", block_dir=None, image=tag, image_id=a, input_dir=tmp_path / "input",
                        output_dir=tmp_path / "output", quicklook_dir=tmp_path / "quicklooks",
                        log_path=tmp_path / "step.log")
        result = DockerEngine(docker_client).run_step(spec)
        assert result.exit_code == 0, spec.log_path.read_text()
        assert (result.image_id, _which(spec.output_dir)) == (a, "A")
    finally:
        docker_client.images.remove(tag)


def test_a_tag_moved_during_a_run_does_not_change_a_later_step(docker_client, images, tmp_path) -> None:
    a, b = images
    tag = f"blockkit-test/moved:{uuid.uuid4().hex[:8]}"
    _tag(docker_client, a, tag)
    workflow = tmp_path / "pinned.yaml"
    step = f"first{uuid.uuid4().hex[:6]}"
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "data.json").write_text('{"type": "FeatureCollection", "features": []}')
    workflow.write_text(f"name: pinned\ninput: {tmp_path / 'input'}\nsteps:\n  {step}: {{image: '{tag}', params: {{sleep: 4}}}}\n"
                        f"  second: {{image: '{tag}', after: [{step}]}}\n")
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = run_request(RunRequest(target=workflow, engine="docker", runs_dir=tmp_path / "runs"))
        except BaseException as exc:  # noqa: BLE001 - the test thread reports it
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    try:
        # While the first step runs, someone points the tag at another image.
        assert wait_for(lambda: "error" in outcome or docker_client.containers.list(
            filters={"label": [f"blockkit.step={step}"]})), "the first step never ran"
        assert "error" not in outcome, outcome["error"]
        _tag(docker_client, b, tag)
    finally:
        runner.join(60)
        docker_client.images.remove(tag)
    assert "error" not in outcome, outcome.get("error")
    run_dir = Path(outcome["summary"]["run_dir"])
    assert _which(run_dir / "steps" / step / "output") == "A"
    assert _which(run_dir / "steps" / "second" / "output") == "A"  # B, had the step looked the tag up again
    recorded = json.loads((run_dir / "run.json").read_text())["steps"]
    assert recorded[step]["image_id"] == recorded["second"]["image_id"] == a


def test_an_image_removed_after_the_run_began_is_a_clear_error(docker_client, images, tmp_path) -> None:
    a, _ = images
    gone = docker_client.containers.run(a, ["true"], entrypoint=[], detach=True, network_mode="none")
    gone.wait()
    image = gone.commit()  # an image of its own, removed below as the run goes on
    gone.remove(force=True)
    docker_client.images.remove(str(image.id))
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "data.json").write_text('{"type": "FeatureCollection", "features": []}')
    spec = StepSpec(name="gone", block_dir=None, image="blockkit-test/gone:1", image_id=str(image.id),
                    input_dir=tmp_path / "input", output_dir=tmp_path / "output",
                    quicklook_dir=tmp_path / "quicklooks", log_path=tmp_path / "step.log")
    with pytest.raises(ImageMissingError, match=r"was removed after the run began; run again"):
        DockerEngine(docker_client).run_step(spec)


def test_an_image_removed_between_two_parts_is_the_same_clear_error(docker_client, images, tmp_path) -> None:
    """The engine keeps an id's inspection: the second part finds out from the daemon, and says so."""
    a, _ = images
    base = docker_client.containers.run(a, ["true"], entrypoint=[], detach=True, network_mode="none")
    base.wait()
    image = base.commit(changes=[f"ENTRYPOINT {json.dumps(docker_client.images.get(a).attrs['Config']['Entrypoint'] or [])}",
                                 f"CMD {json.dumps(docker_client.images.get(a).attrs['Config']['Cmd'])}",
                                 f"USER {docker_client.images.get(a).attrs['Config']['User'] or 'root'}"])
    base.remove(force=True)
    engine = DockerEngine(docker_client)

    def spec(name: str) -> StepSpec:
        (tmp_path / name / "input").mkdir(parents=True)
        (tmp_path / name / "input" / "data.json").write_text('{"type": "FeatureCollection", "features": []}')
        return StepSpec(name="gone-later", block_dir=None, image="blockkit-test/gone:2", image_id=str(image.id),
                        input_dir=tmp_path / name / "input", output_dir=tmp_path / name / "output",
                        quicklook_dir=tmp_path / name / "quicklooks", log_path=tmp_path / name / "step.log")

    first = spec("first")
    assert engine.run_step(first).exit_code == 0, first.log_path.read_text()
    docker_client.images.remove(str(image.id), force=True)
    with pytest.raises(ImageMissingError, match=r"was removed after the run began; run again"):
        engine.run_step(spec("second"))
