"""The Docker engine runs a real block image: isolation, limits, exit codes, cleanup."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from blockkit.runner._docker_engine import (
    TIMEOUT_EXIT_CODE,
    DockerEngine,
    DockerUnavailableError,
    ImageMissingError,
    docker_available,
    docker_client,
)
from blockkit.runner._engine import Resources, StepResult, StepSpec

# A UP42-style block in plain Python: it reports what it sees, then behaves as its parameters say.
PROBE_RUN_PY = r'''
import json, os, sys, time

params = json.loads(os.environ.get("UP42_TASK_PARAMETERS") or "{}")
inp = os.environ.get("BLOCKKIT_INPUT_DIR", "/tmp/input")
out = os.environ.get("BLOCKKIT_OUTPUT_DIR", "/tmp/output")


def first_readable(*paths):
    for path in paths:
        try:
            return open(path).read().strip()
        except OSError:
            pass
    return None


report = {
    "uid": os.getuid(),
    "params": params,
    "mode": os.environ.get("UP42_JOB_MODE"),
    "extra": os.environ.get("EXTRA_VAR"),
    "input_files": sorted(os.listdir(inp)),
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "memory_limit": first_readable("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    # cgroup v2: "max 100000" or "50000 100000"; v1: the quota in us, -1 for none.
    "cpu_max": first_readable("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    "cpu_weight": first_readable("/sys/fs/cgroup/cpu.weight", "/sys/fs/cgroup/cpu/cpu.shares"),
}
for target in [inp] + [os.path.join(inp, name) for name in params.get("upstreams", [])]:
    try:
        with open(os.path.join(target, "intruder.txt"), "w") as handle:
            handle.write("x")
        report.setdefault("writable", []).append(target)
    except OSError as exc:
        report.setdefault("write_errors", []).append(f"{target}: {exc.strerror}")

print("probe: stdout line")
print("probe: stderr line", file=sys.stderr)
sys.stdout.flush()
if params.get("alloc_mb"):
    blob = b"x" * (params["alloc_mb"] << 20)
if params.get("chatter"):
    # Lines and a partial line, forever: a log stream that is busy when the step is stopped.
    while True:
        print("chatter line", flush=True)
        print("part", end="", flush=True)
        time.sleep(0.05)
        print("", flush=True)
if params.get("sleep"):
    time.sleep(params["sleep"])
if params.get("say_after"):
    print(params["say_after"], flush=True)
with open(os.path.join(out, "data.json"), "w") as handle:
    json.dump({"type": "FeatureCollection", "features": [], "report": report}, handle)
sys.exit(int(params.get("exit", 0)))
'''

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def probe_image(docker_client, base_image, tmp_path_factory) -> str:
    """The probe block, built once for this module."""
    from blockkit.runner._build import build_block_image

    block = tmp_path_factory.mktemp("probe-block")
    (block / "src").mkdir()
    (block / "src" / "run.py").write_text(PROBE_RUN_PY)
    manifest = {
        "_up42_specification_version": 2,
        "name": "probe",
        "type": "processing",
        "tags": ["test"],
        "display_name": "Probe",
        "description": "Reports what the container sees.",
        "parameters": {},
        "machine": {"type": "small"},
        "input_capabilities": {},
        "output_capabilities": {},
    }
    (block / "UP42Manifest.json").write_text(json.dumps(manifest))
    return build_block_image(block, base_image=base_image, client=docker_client).tag


@pytest.fixture
def engine(docker_client) -> DockerEngine:
    return DockerEngine(docker_client)


def make_spec(tmp_path: Path, image: str | None, **overrides) -> StepSpec:
    """A step with fresh folders and a unique step name (to find its containers)."""
    input_dir = tmp_path / "input"
    input_dir.mkdir(parents=True, exist_ok=True)
    (input_dir / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    values = dict(
        name=f"probe-{uuid.uuid4().hex[:8]}",
        block_dir=None,
        image=image,
        input_dir=input_dir,
        output_dir=tmp_path / "output",
        quicklook_dir=tmp_path / "quicklooks",
        log_path=tmp_path / "logs" / "step.log",
    )
    values.update(overrides)
    return StepSpec(**values)


def report_of(spec: StepSpec) -> dict:
    return json.loads((spec.output_dir / "data.json").read_text())["report"]


def leftover_containers(client, spec: StepSpec) -> list:
    return client.containers.list(all=True, filters={"label": [f"blockkit.step={spec.name}"]}, ignore_removed=True)


def run(engine: DockerEngine, spec: StepSpec, client) -> StepResult:
    """Run a step and check the invariant of every case: no container is left behind."""
    lines: list[tuple[str, str]] = []
    result = engine.run_step(spec, on_log_line=lambda step, line: lines.append((step, line)))
    assert leftover_containers(client, spec) == []
    run.lines = lines  # type: ignore[attr-defined]
    return result


def test_block_runs_as_non_root_with_parameters_and_env(engine, probe_image, docker_client, tmp_path):
    spec = make_spec(tmp_path, probe_image, params={"answer": 42}, env={"EXTRA_VAR": "yes"}, mode="DRY_RUN")
    result = run(engine, spec, docker_client)

    assert result.exit_code == 0, spec.log_path.read_text()
    assert not result.oom_killed and not result.timed_out
    assert result.image_id == docker_client.images.get(probe_image).id
    report = report_of(spec)
    assert report["uid"] != 0
    assert report["params"] == {"answer": 42}
    assert report["mode"] == "DRY_RUN"
    assert report["extra"] == "yes"
    assert report["input_files"] == ["data.json"]


def test_command_override_shows_non_root_id(engine, probe_image, docker_client, tmp_path):
    spec = make_spec(tmp_path, probe_image, command=["sh", "-c", "id -u"])
    result = run(engine, spec, docker_client)

    assert result.exit_code == 0
    uid = spec.log_path.read_text().strip().splitlines()[0]
    assert uid.isdigit() and int(uid) != 0


def test_input_is_read_only_including_fan_in_mounts(engine, probe_image, docker_client, tmp_path):
    upstream = tmp_path / "upstream-a"
    upstream.mkdir()
    (upstream / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    spec = make_spec(tmp_path, probe_image, params={"upstreams": ["a"]}, upstream_dirs={"a": upstream})
    result = run(engine, spec, docker_client)

    assert result.exit_code == 0, spec.log_path.read_text()
    report = report_of(spec)
    assert "writable" not in report
    assert len(report["write_errors"]) == 2
    assert all("Read-only file system" in error for error in report["write_errors"])
    assert "a" in report["input_files"]
    assert not (spec.input_dir / "intruder.txt").exists()
    assert not (upstream / "intruder.txt").exists()


def test_no_network_by_default_and_network_when_asked(engine, probe_image, docker_client, tmp_path):
    isolated = make_spec(tmp_path / "isolated", probe_image)
    assert run(engine, isolated, docker_client).exit_code == 0
    assert report_of(isolated)["interfaces"] == ["lo"]

    networked = make_spec(tmp_path / "networked", probe_image, network=True)
    assert run(engine, networked, docker_client).exit_code == 0
    # There is no outside network here: the visible difference is a real interface besides lo.
    assert len(report_of(networked)["interfaces"]) > 1


@pytest.mark.parametrize("code", [0, 1, 2, 3, 4, 5, 6])
def test_exit_codes_pass_through(engine, probe_image, docker_client, tmp_path, code):
    spec = make_spec(tmp_path, probe_image, params={"exit": code})
    result = run(engine, spec, docker_client)

    assert result.exit_code == code
    assert not result.oom_killed and not result.timed_out
    if code:
        assert result.detail


def test_out_of_memory_is_reported_as_137(engine, probe_image, docker_client, tmp_path):
    spec = make_spec(tmp_path, probe_image, params={"alloc_mb": 300}, resources=Resources(cpus=1, memory_mb=64))
    result = run(engine, spec, docker_client)

    assert result.exit_code == 137
    assert result.oom_killed
    assert not result.timed_out
    assert "OUT_OF_MEMORY" in result.detail
    assert "OUT_OF_MEMORY" in spec.log_path.read_text()


def test_memory_limit_is_applied(engine, probe_image, docker_client, tmp_path):
    spec = make_spec(tmp_path, probe_image, resources=Resources(cpus=0.5, memory_mb=256))
    assert run(engine, spec, docker_client).exit_code == 0
    assert report_of(spec)["memory_limit"] == str(256 * 1024 * 1024)


def test_machine_type_cpus_are_a_share_not_a_cap_by_default(engine, probe_image, docker_client, tmp_path):
    """A `small` step alone on an idle machine may use more than 0.5 CPU; contended, it weighs 0.5."""
    spec = make_spec(tmp_path, probe_image, resources=Resources(cpus=0.5, memory_mb=256))
    assert run(engine, spec, docker_client).exit_code == 0
    report = report_of(spec)
    assert report["cpu_max"] in ("-1", "max 100000"), report
    # 512 shares (cgroup v1), or its cgroup v2 weight.
    assert report["cpu_weight"] in ("512", "20"), report


def test_strict_cpu_caps_the_step_at_its_machine_type(engine, probe_image, docker_client, tmp_path):
    spec = make_spec(tmp_path, probe_image, resources=Resources(cpus=0.5, memory_mb=256, strict_cpu=True))
    assert run(engine, spec, docker_client).exit_code == 0
    report = report_of(spec)
    assert report["cpu_max"] in ("50000", "50000 100000"), report


def test_timeout_kills_and_is_reported(engine, probe_image, docker_client, tmp_path):
    spec = make_spec(tmp_path, probe_image, params={"sleep": 120}, timeout_s=2)
    start = time.monotonic()
    result = run(engine, spec, docker_client)

    assert time.monotonic() - start < 30
    assert result.timed_out
    assert result.exit_code == TIMEOUT_EXIT_CODE
    assert result.detail == "killed after the 2 s timeout"
    assert not (spec.output_dir / "data.json").exists()


def test_logs_are_captured_in_file_and_sink(engine, probe_image, docker_client, tmp_path):
    spec = make_spec(tmp_path, probe_image, params={"exit": 3})
    result = run(engine, spec, docker_client)

    assert result.exit_code == 3
    log = spec.log_path.read_text()
    assert "probe: stdout line" in log
    assert "probe: stderr line" in log
    assert "NO_INPUT_ERROR" in log
    assert (spec.name, "probe: stdout line") in run.lines  # type: ignore[attr-defined]


def test_a_quiet_step_outlasting_the_client_timeout_keeps_its_log(probe_image, docker_client, tmp_path):
    import docker

    impatient = docker.from_env(timeout=2)
    try:
        spec = make_spec(tmp_path, probe_image, params={"sleep": 4, "say_after": "probe: after the quiet part"})
        result = run(DockerEngine(impatient), spec, docker_client)
    finally:
        impatient.close()

    assert result.exit_code == 0
    log = spec.log_path.read_text()
    assert "probe: stdout line" in log
    assert "probe: after the quiet part" in log
    assert "log stream interrupted" not in log


@pytest.mark.parametrize("params", [{"sleep": 120}, {"chatter": True}], ids=["quiet", "chatty"])
def test_ctrl_c_removes_the_container_and_stops_the_log_reader(engine, probe_image, docker_client, tmp_path,
                                                               monkeypatch, params):
    thread_errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: thread_errors.append(args.exc_value))
    spec = make_spec(tmp_path, probe_image, params=params)
    # Deliver a real SIGINT to this process while the step is running.
    timer = threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.run_step(spec)
    finally:
        timer.cancel()
    assert leftover_containers(docker_client, spec) == []
    time.sleep(0.5)  # a reader left running would write (and fail) now
    assert thread_errors == []
    assert not [t for t in threading.enumerate() if t.name == f"logs-{spec.name}"]
    if "chatter" in params:
        assert "chatter line" in spec.log_path.read_text()


def test_orphans_of_a_dead_runner_are_removed(engine, probe_image, docker_client, tmp_path):
    import subprocess

    from blockkit.runner._docker_engine import owner_labels

    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = owner_labels()

    def container(**labels):
        return docker_client.containers.create(probe_image, ["sleep", "60"], labels={**mine, **labels}, network_mode="none")

    orphan = container(**{"blockkit.pid": str(dead.pid)})
    orphan_sidecar = container(**{"blockkit.pid": str(dead.pid), "blockkit.role": "s3-gateway"})
    alive = container()  # this very process
    # Same host name, another pid namespace (a runner in a container sharing the daemon): hands off.
    elsewhere = container(**{"blockkit.pid": str(dead.pid), "blockkit.pidns": "pid:[4026531999]"})
    unlabelled = container(**{"blockkit.pid": str(dead.pid), "blockkit.pidns": ""})
    try:
        removed = engine.remove_orphans()
        # Another runner on this host may sweep the same orphans first: it is gone either way.
        assert set(removed) <= {orphan.name, orphan_sidecar.name}
        names = [c["Names"][0].lstrip("/") for c in docker_client.api.containers(all=True)]
        assert orphan.name not in names and orphan_sidecar.name not in names
        assert {alive.name, elsewhere.name, unlabelled.name} <= set(names)
    finally:
        for c in (orphan, orphan_sidecar, alive, elsewhere, unlabelled):
            try:
                c.remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


def test_missing_image_is_an_engine_error(engine, docker_client, tmp_path):
    spec = make_spec(tmp_path, "blockkit/does-not-exist:000000000000")
    with pytest.raises(ImageMissingError, match="does not exist"):
        engine.run_step(spec)


def test_step_with_block_dir_and_no_image_is_built_first(docker_client, base_image, probe_image, tmp_path):
    block = tmp_path / "block"
    (block / "src").mkdir(parents=True)
    (block / "src" / "run.py").write_text("print('built on demand')\n")
    (block / "UP42Manifest.json").write_text(
        json.dumps({
            "_up42_specification_version": 2, "name": "on-demand", "type": "processing",
            "tags": [], "display_name": "On demand", "description": "x", "parameters": {},
            "machine": {"type": "small"}, "input_capabilities": {}, "output_capabilities": {},
        })
    )
    engine = DockerEngine(docker_client, base_image=base_image)
    spec = make_spec(tmp_path, None, block_dir=block)
    result = run(engine, spec, docker_client)
    assert result.exit_code == 0
    assert "built on demand" in spec.log_path.read_text()


def test_docker_available_is_true_with_a_daemon(docker_client):
    assert docker_available()


def test_no_daemon_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    assert docker_available(timeout=1) is False
    with pytest.raises(DockerUnavailableError, match="no Docker daemon answers"):
        docker_client(timeout=1)


def test_a_flood_of_output_reaches_the_log_file_whole(engine, probe_image, docker_client, tmp_path):
    """17 MB of output as fast as a block can write it: every line reaches the log file, the daemon stays responsive.

    With the log driver `none` (tried to keep the daemon from storing its own copy), this
    flood stalled the attached stream and left the daemon unable to inspect the container
    (Docker 20.10 here): steps keep the default driver.
    """
    flood = 'import sys\nfor i in range(200000):\n    sys.stdout.write("flood %06d %s\\n" % (i, "x" * 80))\nsys.stdout.flush()\nimport time; time.sleep(3)\n'
    spec = make_spec(tmp_path, probe_image, command=["python", "-c", flood])
    seen: dict = {}

    def watch() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not seen:
            for container in leftover_containers(docker_client, spec):
                container.reload()
                if container.status == "running":
                    seen.update(log_type=container.attrs["HostConfig"]["LogConfig"]["Type"],
                                log_path=container.attrs.get("LogPath") or "")
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    result = run(engine, spec, docker_client)
    watcher.join()
    assert result.exit_code == 0
    assert seen
    lines = spec.log_path.read_text().splitlines()
    assert sum(1 for line in lines if line.startswith("flood ")) == 200000  # ~17 MB, none lost


def test_the_daemons_size_is_asked_once_while_the_images_are_checked(docker_client, base_image, tmp_path, monkeypatch):
    """`prepare_images` asks the daemon's size beside its checks: the caps after it ask nothing more."""
    from blockkit.runner._build import build_block_image
    from blockkit.runner._plan import plan_workflow
    from blockkit.runner._workflow import load_workflow

    block = tmp_path / "probe"
    (block / "src").mkdir(parents=True)
    (block / "src" / "run.py").write_text(PROBE_RUN_PY)
    (block / "UP42Manifest.json").write_text(json.dumps({
        "_up42_specification_version": 2, "name": "probe", "type": "processing", "parameters": {},
        "machine": {"type": "small"}, "input_capabilities": {}, "output_capabilities": {}}))
    build_block_image(block, base_image=base_image, client=docker_client)
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"name: sizes\nsteps:\n  probe: {{block: {json.dumps(str(block))}}}\n")
    asked: list[str] = []
    info = docker_client.info
    monkeypatch.setattr(docker_client, "info", lambda: (asked.append(threading.current_thread().name), info())[1])
    engine = DockerEngine(docker_client)
    images = engine.prepare_images(plan_workflow(load_workflow(workflow)), lambda line: None)
    assert len(asked) == 1 and asked[0].startswith("image")  # asked in the checks' pool, beside them
    expected = info()
    assert engine.capacity() == (float(expected["NCPU"]), int(expected["MemTotal"]) >> 20)
    assert engine.capacity() == engine.capacity() and len(asked) == 1
    assert images is not None
