"""The parts of a scattered step share one network-less namespace (a holder container), safely.

A container's own empty network namespace is half of what Docker spends on a short container;
the parts of one scattered step join a holder's instead. These tests check what that must not
change: a part still sees only loopback, other steps never share it, an image whose `sleep` is
missing or stops falls back to a namespace per part, and nothing is left behind, even when the
runner is killed with kill -9.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from blockkit.runner._docker_engine import SHARED_NETWORK_MIN_PARTS, DockerEngine
from blockkit.runner._engine import StepSpec
from tests.security.engine_blocks import cli_command, new_marker, processes_with, wait_for

pytestmark = pytest.mark.docker

# Reports its network namespace and interfaces; with `hang`, stays (marked) until killed.
NETNS_RUN_PY = r'''
import json, os, sys, time

params = json.loads(os.environ.get("UP42_TASK_PARAMETERS") or "{}")
out = os.environ.get("BLOCKKIT_OUTPUT_DIR", "/tmp/output")
if params.get("hang"):
    print("hanging", flush=True)
    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(120)", params["hang"]])
report = {"netns": os.readlink("/proc/self/ns/net"), "interfaces": sorted(os.listdir("/sys/class/net"))}
with open(os.path.join(out, "data.json"), "w") as handle:
    json.dump({"type": "FeatureCollection", "features": [], "report": report}, handle)
'''


def _write_block(folder: Path) -> Path:
    """The netns probe as a block folder (machine type `small`)."""
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "run.py").write_text(NETNS_RUN_PY)
    (folder / "UP42Manifest.json").write_text(json.dumps({
        "_up42_specification_version": 2, "name": "netns-probe", "type": "processing",
        "parameters": {"hang": {"type": "string"}}, "machine": {"type": "small"},
        "input_capabilities": {}, "output_capabilities": {}}))
    return folder


@pytest.fixture(scope="module")
def netns_image(docker_client, base_image, tmp_path_factory) -> str:
    from blockkit.runner._build import build_block_image

    block = _write_block(tmp_path_factory.mktemp("netns") / "block")
    return build_block_image(block, base_image=base_image, client=docker_client).tag


def _image_with_sleep(docker_client, image: str, script: str | None) -> str:
    """`image` with /usr/bin/sleep replaced by `script` (None: removed), as a new local image."""
    setup = "rm -f /usr/bin/sleep /bin/sleep"
    if script is not None:
        lines = " ".join(shlex.quote(line) for line in script.splitlines())
        setup = f"mv /usr/bin/sleep /usr/bin/sleep.real && printf '%s\\n' {lines} > /usr/bin/sleep && chmod 755 /usr/bin/sleep"
    container = docker_client.containers.run(image, ["sh", "-c", setup], entrypoint=[], user="root",
                                             detach=True, network_mode="none")
    try:
        assert container.wait()["StatusCode"] == 0
        tag = f"blockkit-test/sleepless:{uuid.uuid4().hex[:8]}"
        config = docker_client.images.get(image).attrs["Config"]
        # A commit keeps the container's command and user: give back the image's own.
        container.commit(repository=tag.split(":")[0], tag=tag.split(":")[1], changes=[
            f"CMD {json.dumps(config['Cmd'])}", f"ENTRYPOINT {json.dumps(config['Entrypoint'] or [])}",
            f"USER {config['User'] or 'root'}"])
        return tag
    finally:
        container.remove(force=True)


def _spec(root: Path, name: str, image: str, **overrides) -> StepSpec:
    (root / "input").mkdir(parents=True, exist_ok=True)
    (root / "input" / "data.json").write_text('{"type": "FeatureCollection", "features": []}')
    return StepSpec(name=name, block_dir=None, image=image, input_dir=root / "input",
                    output_dir=root / "output", quicklook_dir=root / "quicklooks",
                    log_path=root / "logs" / "step.log", **overrides)


def _report(spec: StepSpec) -> dict:
    return json.loads((spec.output_dir / "data.json").read_text())["report"]


def _containers(docker_client, step: str, **labels: str) -> list:
    wanted = [f"blockkit.step={step}", *(f"{key}={value}" for key, value in labels.items())]
    return docker_client.containers.list(all=True, filters={"label": wanted}, ignore_removed=True)


def _parts(engine: DockerEngine, tmp_path: Path, image: str, count: int, expected: int,
           **overrides) -> tuple[list[dict], list]:
    """Run `count` parts of one step, one after another, in its parts scope: their reports and
    the step's running holders as the last part ended."""
    name = f"scatter-{uuid.uuid4().hex[:8]}"
    specs = [_spec(tmp_path / f"part{i}", name, image, **overrides) for i in range(count)]
    reports = []
    with engine.parts_scope(specs[0], expected):
        for spec in specs:
            assert engine.run_step(spec).exit_code == 0, spec.log_path.read_text()
            reports.append(_report(spec))
        holders = [c for c in _containers(engine.client, name, **{"blockkit.role": "network"}) if c.status == "running"]
    assert _containers(engine.client, name) == []  # parts and holder alike
    return reports, holders


def test_parts_of_a_step_share_one_namespace_with_only_loopback(docker_client, netns_image, tmp_path) -> None:
    engine = DockerEngine(docker_client)
    reports, holders = _parts(engine, tmp_path, netns_image, 3, expected=3)
    assert len(holders) == 1
    assert {r["netns"] for r in reports} == {reports[0]["netns"]}
    assert all(r["interfaces"] == ["lo"] for r in reports)


def test_two_steps_at_once_never_share_a_namespace(docker_client, netns_image, tmp_path) -> None:
    # (Namespace numbers are reused once one is gone: the two steps' parts run at the same time.)
    engine = DockerEngine(docker_client)
    steps = {name: [_spec(tmp_path / name / f"part{i}", name, netns_image) for i in range(2)]
             for name in (f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}")}
    (a, a_specs), (b, b_specs) = steps.items()
    with engine.parts_scope(a_specs[0], 3), engine.parts_scope(b_specs[0], 3):
        for spec in (a_specs[0], b_specs[0], a_specs[1], b_specs[1]):
            assert engine.run_step(spec).exit_code == 0
        assert len(_containers(docker_client, a, **{"blockkit.role": "network"})) == 1
        assert len(_containers(docker_client, b, **{"blockkit.role": "network"})) == 1
    a_ns = {_report(spec)["netns"] for spec in a_specs}
    b_ns = {_report(spec)["netns"] for spec in b_specs}
    assert len(a_ns) == len(b_ns) == 1 and a_ns != b_ns
    assert _containers(docker_client, a) == _containers(docker_client, b) == []


def test_the_holder_is_labelled_hardened_and_removed_with_the_step(docker_client, netns_image, tmp_path) -> None:
    engine = DockerEngine(docker_client)
    spec = _spec(tmp_path, f"scatter-{uuid.uuid4().hex[:8]}", netns_image)
    with engine.parts_scope(spec, 8):
        assert engine.run_step(spec).exit_code == 0
        holders = _containers(docker_client, spec.name, **{"blockkit.role": "network"})
        assert len(holders) == 1
        config = holders[0].attrs["HostConfig"]
        assert config["NetworkMode"] == "none" and config["CapDrop"] == ["ALL"] and config["ReadonlyRootfs"]
        assert config["Binds"] in (None, []) and not holders[0].attrs["Mounts"]
        assert config["PidsLimit"] == 8 and config["Memory"] == 32 << 20
        assert holders[0].attrs["Image"] == docker_client.images.get(netns_image).id
        assert holders[0].attrs["Config"]["Labels"]["blockkit.pid"] == str(os.getpid())
    assert _containers(docker_client, spec.name) == []


@pytest.mark.parametrize("expected", [0, SHARED_NETWORK_MIN_PARTS - 1])
def test_few_parts_or_a_networked_block_get_no_holder(docker_client, netns_image, tmp_path, expected) -> None:
    engine = DockerEngine(docker_client)
    few, holders = _parts(engine, tmp_path / "few", netns_image, 2, expected=expected)
    assert holders == [] and all(r["interfaces"] == ["lo"] for r in few)
    networked, holders = _parts(engine, tmp_path / "net", netns_image, 2, expected=8, network=True)
    assert holders == []
    assert all(len(r["interfaces"]) > 1 for r in networked)  # bridge, as without scatter


def test_an_image_without_sleep_gets_a_namespace_per_part(docker_client, netns_image, tmp_path) -> None:
    image = _image_with_sleep(docker_client, netns_image, None)
    try:
        reports, holders = _parts(DockerEngine(docker_client), tmp_path, image, 3, expected=3)
        assert holders == []
        assert all(r["interfaces"] == ["lo"] for r in reports)
    finally:
        docker_client.images.remove(image, force=True)


def test_a_sleep_that_stops_early_makes_later_parts_fall_back(docker_client, netns_image, tmp_path) -> None:
    # The image's own `sleep` is untrusted: this one stops after 1 s, before the next parts start.
    # A part joining a stopped holder could not start: these run, with a namespace of their own.
    image = _image_with_sleep(docker_client, netns_image, "#!/bin/sh\nexec /usr/bin/sleep.real 1\n")
    try:
        engine = DockerEngine(docker_client)
        name = f"scatter-{uuid.uuid4().hex[:8]}"
        specs = [_spec(tmp_path / f"part{i}", name, image) for i in range(3)]
        with engine.parts_scope(specs[0], 3):
            assert engine.run_step(specs[0]).exit_code == 0
            assert len(_containers(docker_client, name, **{"blockkit.role": "network"})) == 1
            time.sleep(2.0)
            for spec in specs[1:]:
                assert engine.run_step(spec).exit_code == 0, spec.log_path.read_text()
        assert all(_report(spec)["interfaces"] == ["lo"] for spec in specs)
        assert _containers(docker_client, name) == []
    finally:
        docker_client.images.remove(image, force=True)


@pytest.mark.slow
def test_kill_9_of_the_runner_removes_parts_and_holder(docker_client, netns_image, tmp_path) -> None:
    """One watchdog per runner finds its containers by their labels: every part and the holder go."""
    marker = new_marker()
    block = _write_block(tmp_path / "block")  # the fixture's image: the same folder content
    data = tmp_path / "input"
    data.mkdir()
    features = []
    for i in range(4):
        (data / f"f{i}.txt").write_text(f"{i}\n")
        features.append({"type": "Feature", "id": f"f{i}", "geometry": None,
                         "properties": {"up42.data_path": f"f{i}.txt"}})
    (data / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"name: killed\ninput: {json.dumps(str(data))}\nsteps:\n"
                        f"  hang: {{block: {json.dumps(str(block))}, params: {{hang: {marker}}}, scatter: features}}\n")
    env = {**os.environ, "BLOCKKIT_RUNS_DIR": str(tmp_path / "runs")}
    proc = subprocess.Popen(cli_command("run", str(workflow), "-e", "docker", "-q", "--jobs", "2"),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    labels = {"blockkit.pid": str(proc.pid)}
    try:
        assert wait_for(lambda: len(processes_with(marker)) >= 2, timeout=180), "the parts did not start"
        assert len(_containers(docker_client, "hang", **labels, **{"blockkit.role": "network"})) == 1
        proc.kill()
        proc.wait(timeout=10)
        assert wait_for(lambda: _containers(docker_client, "hang", **labels) == [], timeout=90), "containers left"
        assert wait_for(lambda: processes_with(marker) == [], timeout=30), "block processes left"
    finally:
        if proc.poll() is None:
            proc.kill()
        for container in _containers(docker_client, "hang", **labels):
            container.remove(force=True)


def test_a_unix_socket_client_skips_the_proxy_and_netrc_lookups(docker_client) -> None:
    """Each request of the SDK's session scanned the whole environment for proxies: not on a unix socket."""
    import docker

    from blockkit.runner._docker_client import _local, connect_if_available

    client = connect_if_available()
    assert client is not None and client.api.trust_env is False
    client.close()
    remote = _local(docker.DockerClient(base_url="tcp://127.0.0.1:9", version="1.41"))  # never connects
    assert remote.api.trust_env is True  # a proxy may be what reaches a daemon over tcp://
    remote.close()
