"""A step without network gets a namespace of its own: loopback only, `localhost` known, cheap.

The engine asks Docker for `network_disabled` (runc makes the namespace, no network sandbox,
no prestart hook: docs/docker.md) and mounts an /etc/hosts it writes for the container. These
tests check what that must give a block: its own namespace, not the host's nor another part's
(two parts running at once cannot reach each other over loopback), nothing but a loopback
that is up, `localhost` resolving, an /etc/hosts of its own it cannot change (a file beside
its output, gone with it); a sidecar's namespace joined with such an /etc/hosts; bridge
networking for a block that asks for it; nothing left behind, even when the runner is killed
with kill -9.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from blockkit.runner._docker_client import helper_container_options
from blockkit.runner._docker_engine import DockerEngine
from blockkit.runner._engine import StepSpec
from tests.security.engine_blocks import cli_command, new_marker, processes_with, wait_for

pytestmark = pytest.mark.docker

# Reports its network namespace, interfaces, loopback, /etc/hosts; with `listen`, waits for a
# connection on that loopback port; with `connect`, tries that port for a few seconds;
# with `hang`, stays (marked) until killed.
NETNS_RUN_PY = r'''
import errno, json, os, socket, sys, time

params = json.loads(os.environ.get("UP42_TASK_PARAMETERS") or "{}")
out = os.environ.get("BLOCKKIT_OUTPUT_DIR", "/tmp/output")
with open(os.path.join(os.environ.get("BLOCKKIT_INPUT_DIR", "/tmp/input"), "data.json")) as handle:
    for feature in json.load(handle)["features"]:  # a scattered part: its feature may ask too
        params.update(feature["properties"].get("probe", {}))
if params.get("hang"):
    print("hanging", flush=True)
    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(120)", params["hang"]])
report = {"netns": os.readlink("/proc/self/ns/net"), "interfaces": sorted(os.listdir("/sys/class/net"))}
report["lo_flags"] = int(open("/sys/class/net/lo/flags").read(), 16)
own = socket.socket()
own.bind(("127.0.0.1", 0))
own.listen()
socket.create_connection(own.getsockname(), timeout=2).close()  # its own loopback works
report["own_loopback"] = True
try:
    report["localhost"] = socket.gethostbyname("localhost")
except OSError as exc:
    report["localhost"] = f"error: {exc}"
try:
    with open("/etc/hosts", "a") as hosts:
        hosts.write("6.6.6.6 localhost\n")
    report["hosts_written"] = True
except OSError as exc:
    report["hosts_written"] = errno.errorcode.get(exc.errno, str(exc.errno))
if params.get("listen"):
    server = socket.socket()
    server.bind(("127.0.0.1", int(params["listen"])))
    server.listen()
    open(os.path.join(out, "listening"), "w").close()
    report["listening_from"] = time.time()
    server.settimeout(float(params.get("wait", 6)))
    try:
        server.accept()
        report["accepted"] = True
    except socket.timeout:
        report["accepted"] = False
    report["listening_to"] = time.time()
if params.get("connect"):
    deadline = time.monotonic() + float(params.get("wait", 6))
    report["connected"] = False
    report["connecting_from"] = time.time()
    while time.monotonic() < deadline and not report["connected"]:
        try:
            socket.create_connection(("127.0.0.1", int(params["connect"])), timeout=1).close()
            report["connected"] = True
        except OSError:
            time.sleep(0.1)
    report["connecting_to"] = time.time()
with open(os.path.join(out, "report.json"), "w") as handle:
    json.dump(report, handle)
with open(os.path.join(out, "data.json"), "w") as handle:
    json.dump({"type": "FeatureCollection", "features": []}, handle)
'''


def _write_block(folder: Path) -> Path:
    """The netns probe as a block folder (machine type `small`)."""
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "run.py").write_text(NETNS_RUN_PY)
    (folder / "UP42Manifest.json").write_text(json.dumps({
        "_up42_specification_version": 2, "name": "netns-probe", "type": "processing",
        "parameters": {name: {"type": "string"} for name in ("hang", "listen", "connect", "wait")},
        "machine": {"type": "small"}, "input_capabilities": {}, "output_capabilities": {}}))
    return folder


@pytest.fixture(scope="module")
def netns_image(docker_client, base_image, tmp_path_factory) -> str:
    from blockkit.runner._build import build_block_image

    block = _write_block(tmp_path_factory.mktemp("netns") / "block")
    return build_block_image(block, base_image=base_image, client=docker_client).tag


def _spec(root: Path, name: str, image: str, **overrides) -> StepSpec:
    (root / "input").mkdir(parents=True, exist_ok=True)
    (root / "input" / "data.json").write_text('{"type": "FeatureCollection", "features": []}')
    return StepSpec(name=name, block_dir=None, image=image, input_dir=root / "input",
                    output_dir=root / "output", quicklook_dir=root / "quicklooks",
                    log_path=root / "logs" / "step.log", **overrides)


def _report(spec: StepSpec) -> dict:
    return json.loads((spec.output_dir / "report.json").read_text())


def _containers(docker_client, step: str, **labels: str) -> list:
    wanted = [f"blockkit.step={step}", *(f"{key}={value}" for key, value in labels.items())]
    return docker_client.containers.list(all=True, filters={"label": wanted}, ignore_removed=True)


def _sees_only_its_loopback(report: dict) -> None:
    assert report["interfaces"] == ["lo"] and report["lo_flags"] & 0x1  # IFF_UP
    assert report["localhost"] == "127.0.0.1"
    assert report["hosts_written"] in ("EROFS", "EACCES") and report["own_loopback"]


def test_a_step_without_network_has_its_own_namespace_with_only_loopback(docker_client, netns_image, tmp_path) -> None:
    engine = DockerEngine(docker_client)
    spec = _spec(tmp_path, f"alone-{uuid.uuid4().hex[:8]}", netns_image)
    assert engine.run_step(spec).exit_code == 0, spec.log_path.read_text()
    report = _report(spec)
    _sees_only_its_loopback(report)
    assert report["netns"] != os.readlink("/proc/self/ns/net")  # not the host's
    assert _containers(docker_client, spec.name) == []
    assert list(tmp_path.glob(".blockkit-hosts-*")) == []  # the container's /etc/hosts went with it


def _scatter_workflow(tmp_path: Path, block: Path, probes: list[dict], params: str = "{}") -> Path:
    """A workflow of one scattered step of the probe block over one feature per entry of `probes`."""
    data = tmp_path / "input"
    data.mkdir()
    features = []
    for i, probe in enumerate(probes):
        (data / f"f{i}.txt").write_text(f"{i}\n")
        features.append({"type": "Feature", "id": f"f{i}", "geometry": None,
                         "properties": {"up42.data_path": f"f{i}.txt", "probe": probe}})
    (data / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"name: parts\ninput: {json.dumps(str(data))}\nsteps:\n"
                        f"  probe: {{block: {json.dumps(str(block))}, params: {params}, scatter: features}}\n")
    return workflow


def test_two_parts_running_at_once_cannot_reach_each_other(docker_client, netns_image, tmp_path) -> None:
    """Parts of one scattered step run at once, each in a namespace of its own: one's loopback port is not the other's.

    (Until the tenth session, three or more parts joined one holder container's namespace
    and could reach each other: the second part connected.)
    """
    from blockkit.runner._session import RunRequest, run_request

    block = _write_block(tmp_path / "block")  # the fixture's image: the same folder content
    workflow = _scatter_workflow(tmp_path, block, [{"listen": "4555", "wait": "15"}, {"connect": "4555", "wait": "8"}, {}])
    summary = run_request(RunRequest(target=workflow, engine="docker", runs_dir=tmp_path / "runs", jobs=3))
    parts = Path(summary["run_dir"]) / "steps" / "probe" / "parts"
    listener, talker, third = (json.loads((parts / f"f{i}" / "output" / "report.json").read_text()) for i in range(3))
    # At the same time: the talker kept trying for seconds while the listener listened.
    overlap = (min(talker["connecting_to"], listener["listening_to"])
               - max(talker["connecting_from"], listener["listening_from"]))
    assert overlap > 2.0, (listener, talker)
    assert listener["accepted"] is False and talker["connected"] is False
    assert listener["netns"] != talker["netns"]  # both alive at once: namespace numbers are not reused yet
    assert list(Path(summary["run_dir"]).rglob(".blockkit-hosts-*")) == []  # each container's went with it
    for report in (listener, talker, third):
        _sees_only_its_loopback(report)
    assert _containers(docker_client, "probe", **{"blockkit.pid": str(os.getpid())}) == []


def test_a_step_joins_its_sidecars_namespace_and_knows_localhost(docker_client, netns_image, tmp_path) -> None:
    """With an S3 sidecar the block joins the sidecar's namespace; /etc/hosts comes from the engine there too."""
    name = f"sidecar-{uuid.uuid4().hex[:8]}"
    sidecar = docker_client.containers.run(netns_image, ["2147483647"], entrypoint=["sleep"], detach=True,
                                           **helper_container_options("s3-gateway", name, pids=8))
    try:
        # Read inside the sidecar: its process may be another user's than the test's.
        code, out = sidecar.exec_run(["python3", "-c", "import os; print(os.readlink('/proc/self/ns/net'))"])
        assert code == 0, out
        spec = _spec(tmp_path, name, netns_image)
        spec.network_container = sidecar.id
        assert DockerEngine(docker_client).run_step(spec).exit_code == 0, spec.log_path.read_text()
        report = _report(spec)
        assert report["netns"] == out.decode().strip() != os.readlink("/proc/self/ns/net")
        _sees_only_its_loopback(report)
        assert list(tmp_path.glob(".blockkit-hosts-*")) == []
    finally:
        sidecar.remove(force=True)


def test_a_block_that_asks_for_network_gets_the_bridge(docker_client, netns_image, tmp_path) -> None:
    spec = _spec(tmp_path, f"net-{uuid.uuid4().hex[:8]}", netns_image, network=True)
    assert DockerEngine(docker_client).run_step(spec).exit_code == 0, spec.log_path.read_text()
    report = _report(spec)
    assert len(report["interfaces"]) > 1 and report["localhost"] == "127.0.0.1"  # Docker's own /etc/hosts


@pytest.mark.slow
def test_kill_9_of_the_runner_removes_every_part(docker_client, netns_image, tmp_path) -> None:
    """One watchdog per runner finds its containers by their labels: every running part goes."""
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
        assert len(_containers(docker_client, "hang", **labels)) >= 2
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


# --- without Docker: the settings and the hosts file ----------------------------------------

@pytest.mark.parametrize("case", ["alone", "sidecar", "network", "network and sidecar"])
def test_the_container_settings_never_disable_the_network_of_a_joining_container(tmp_path: Path, case: str) -> None:
    """Docker ignores `container:` without a word when the network is disabled: the join must never carry it."""
    spec = _spec(tmp_path, "s", "img", network="network" in case,
                 network_container="abc123" if "sidecar" in case else None)
    hosts = tmp_path / ".blockkit-hosts-x"
    kwargs = DockerEngine(client=object())._container_kwargs(spec, "1000:1000", {}, hosts)
    targets = {m["Target"]: m for m in kwargs["mounts"]}
    if "sidecar" in case:
        assert (kwargs["network_mode"], kwargs["network_disabled"]) == ("container:abc123", False)
    elif case == "network":
        assert kwargs["network_mode"] == "bridge" and "network_disabled" not in kwargs
    else:
        assert (kwargs["network_mode"], kwargs["network_disabled"]) == ("none", True)
    if case == "network":
        assert "/etc/hosts" not in targets  # Docker writes the bridge's own
    else:
        assert targets["/etc/hosts"]["Source"] == str(hosts) and targets["/etc/hosts"]["ReadOnly"]


def test_a_hosts_file_is_readable_by_the_block_whatever_the_umask_and_never_written_through_a_link(tmp_path) -> None:
    from blockkit.runner._docker_client import HOSTS_TEXT, hosts_file

    old = os.umask(0o077)
    try:
        with hosts_file(tmp_path, "c1") as path:
            assert path.parent == tmp_path and path.read_text() == HOSTS_TEXT
            assert (path.stat().st_mode & 0o777) == 0o644
            assert HOSTS_TEXT.startswith("127.0.0.1\tlocalhost\n")
    finally:
        os.umask(old)
    assert not path.exists()
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / ".blockkit-hosts-c2").symlink_to(target)
    with pytest.raises(FileExistsError):
        with hosts_file(tmp_path, "c2"):
            pass
    assert target.read_text() == "keep"
