"""Docker steps are hardened by default (pids, capabilities, no-new-privileges, read-only root),
their containers never outlive the runner, and a block that needs more says so in its manifest."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from blockkit.runner._docker_engine import DockerEngine, block_options, pids_limit
from blockkit.runner._engine import Resources, StepSpec
from blockkit.runner._run import RunFailed
from blockkit.runner._session import RunRequest, run_request

from .engine_blocks import cli_command, files_under, marked_workflow, processes_with, wait_for, workflow, write_hostile


def _spec(tmp_path: Path, block: Path, cpus: float = 0.5, memory: int = 2048) -> StepSpec:
    return StepSpec(name="s", block_dir=block, image=None, input_dir=tmp_path / "in", output_dir=tmp_path / "out",
                    quicklook_dir=tmp_path / "ql", log_path=tmp_path / "s.log",
                    resources=Resources(cpus=cpus, memory_mb=memory))


def test_container_settings_are_hardened_by_default(tmp_path: Path) -> None:
    pytest.importorskip("docker")
    block = write_hostile(tmp_path / "blocks")
    spec = _spec(tmp_path, block)
    kwargs = DockerEngine(client=object())._container_kwargs(spec, "1000:1000", block_options(spec, None))
    assert kwargs["cap_drop"] == ["ALL"] and kwargs["security_opt"] == ["no-new-privileges"]
    assert kwargs["read_only"] is True and kwargs["pids_limit"] == 512
    assert kwargs["tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=1024m,mode=1777"}
    assert kwargs["network_mode"] == "none" and kwargs["user"] == "1000:1000"
    assert kwargs["environment"]["HOME"] == "/tmp" and kwargs["environment"]["TMPDIR"] == "/tmp"
    assert pids_limit(_spec(tmp_path, block, cpus=16), {}) == 4096


def test_a_block_asking_for_more_says_so_and_gets_it(tmp_path: Path) -> None:
    pytest.importorskip("docker")
    block = write_hostile(tmp_path / "blocks", options={"writable_root": True, "pids": 2000, "network": True})
    spec = _spec(tmp_path, block)
    spec.network = True
    kwargs = DockerEngine(client=object())._container_kwargs(spec, "1000:1000", block_options(spec, None))
    assert kwargs["read_only"] is False and kwargs["pids_limit"] == 2000 and kwargs["network_mode"] == "bridge"
    done = subprocess.run(cli_command("validate", str(block)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "asks for network, writable root filesystem, 2000 processes" in done.stdout
    bad = write_hostile(tmp_path / "bad", options={"pids": 3})
    done = subprocess.run(cli_command("validate", str(bad)), capture_output=True, text=True)
    assert done.returncode != 0 and "pids" in done.stderr


def _running_container(client, step: str):
    found = client.containers.list(ignore_removed=True, filters={"label": [f"blockkit.step={step}"]})
    return found[0] if found else None


@pytest.mark.docker
@pytest.mark.slow
def test_a_running_step_is_hardened_as_docker_inspect_shows(tmp_path: Path, docker_client, base_image) -> None:
    marker, wf = marked_workflow(tmp_path, "hang", source=False, extra=", timeout: 60")
    seen: dict = {}

    def inspect(kind: str, step: str, info: dict) -> None:
        if kind == "started":
            def look() -> None:
                if wait_for(lambda: _running_container(docker_client, "evil") is not None, timeout=60):
                    container = _running_container(docker_client, "evil")
                    seen["host"] = container.attrs["HostConfig"]
                    container.kill()
            threading.Thread(target=look, daemon=True).start()

    with pytest.raises(RunFailed):
        run_request(RunRequest(target=wf, engine="docker", runs_dir=tmp_path / "runs", on_event=inspect))
    host = seen["host"]
    assert host["PidsLimit"] == 512 and host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"] and host["ReadonlyRootfs"] is True
    assert "/tmp" in host["Tmpfs"] and host["NetworkMode"] == "none"
    assert docker_client.containers.list(ignore_removed=True, all=True, filters={"label": ["blockkit.step=evil"]}) == []


@pytest.mark.docker
def test_a_hostile_block_in_docker_cannot_gain_privileges_or_write_the_image(tmp_path: Path, docker_client,
                                                                            base_image) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    block = write_hostile(tmp_path / "blocks")
    summary = run_request(RunRequest(
        target=workflow(tmp_path, block, {"action": "attack", "victims": [str(victim)]}),
        engine="docker", runs_dir=tmp_path / "runs"))
    tried = json.loads((Path(summary["steps"]["evil"]["output_dir"]) / "data.json").read_text())["tried"]
    assert tried["NoNewPrivs"] == ["1"] and tried["CapEff"] == ["0000000000000000"]
    assert tried["/etc/planted"] != "written" and tried["/usr/planted"] != "written"  # read-only root
    assert tried["/tmp/input/a.txt"] != "written" and tried[str(victim)] != "written"
    assert tried["/tmp/scratch.txt"] == "written" and tried["/tmp/.cache-probe"] == "written"  # tmpfs /tmp, HOME
    assert victim.read_text() == "untouched\n"


@pytest.mark.docker
def test_a_fork_bomb_is_stopped_by_the_pids_limit(tmp_path: Path, docker_client, base_image) -> None:
    block = write_hostile(tmp_path / "blocks")
    summary = run_request(RunRequest(
        target=workflow(tmp_path, block, {"action": "fork-bomb", "forks": 3000}, source=False),
        engine="docker", runs_dir=tmp_path / "runs"))
    data = json.loads((Path(summary["steps"]["evil"]["output_dir"]) / "data.json").read_text())
    assert data["children"] < 512
    log = (Path(summary["run_dir"]) / "logs" / "evil.log").read_text()
    assert "fork failed after" in log
    assert docker_client.containers.list(ignore_removed=True, all=True, filters={"label": ["blockkit.step=evil"]}) == []


@pytest.mark.docker
@pytest.mark.slow
def test_kill_9_of_the_runner_removes_the_step_container(tmp_path: Path, docker_client, base_image) -> None:
    marker, wf = marked_workflow(tmp_path, "hang", source=False)
    env = {**os.environ, "BLOCKKIT_RUNS_DIR": str(tmp_path / "runs")}
    proc = subprocess.Popen(cli_command("run", str(wf), "-e", "docker", "-q"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: len(processes_with(marker)) >= 2, timeout=120)
        assert wait_for(lambda: len(list((tmp_path / "runs").rglob("late-*.txt"))) >= 2, timeout=30)
        proc.kill()
        proc.wait(timeout=10)
        # The daemon may be slow to remove a running container on a loaded machine.
        assert wait_for(lambda: docker_client.containers.list(
            ignore_removed=True, all=True, filters={"label": ["blockkit.step=evil"]}) == [], timeout=90), "container left"
        assert wait_for(lambda: processes_with(marker) == [], timeout=30), "block processes left"
        out_dir = next(p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file()) / "steps/evil"
        sizes = {p.name: p.stat().st_size for p in files_under(out_dir)}
        assert wait_for(lambda: False, timeout=1.0) is False
        assert {p.name: p.stat().st_size for p in files_under(out_dir)} == sizes
    finally:
        if proc.poll() is None:
            proc.kill()
        for container in docker_client.containers.list(ignore_removed=True, all=True, filters={"label": ["blockkit.step=evil"]}):
            container.remove(force=True)


@pytest.mark.docker
@pytest.mark.slow
def test_sigterm_removes_the_container_and_marks_the_run_interrupted(tmp_path: Path, docker_client,
                                                                   base_image) -> None:
    import signal

    marker, wf = marked_workflow(tmp_path, "hang", source=False)
    env = {**os.environ, "BLOCKKIT_RUNS_DIR": str(tmp_path / "runs")}
    proc = subprocess.Popen(cli_command("run", str(wf), "-e", "docker", "-q"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: len(processes_with(marker)) >= 2, timeout=120)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
        assert [line for line in err.splitlines() if line.startswith("[INTERRUPTED]")][0].count("SIGTERM") == 1
        assert docker_client.containers.list(ignore_removed=True, all=True, filters={"label": ["blockkit.step=evil"]}) == []
        assert processes_with(marker) == []
        run_dir = next(p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file())
        assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    finally:
        if proc.poll() is None:
            proc.kill()
        for container in docker_client.containers.list(ignore_removed=True, all=True, filters={"label": ["blockkit.step=evil"]}):
            container.remove(force=True)


def _relay(port_holder: list[int], stop: threading.Event, target: str = "/var/run/docker.sock") -> threading.Thread:
    """A plain tcp:// endpoint for the real daemon: each connection relayed to its unix socket, both ways."""
    import socket

    from tests.servers import serve_connections

    server = socket.create_server(("127.0.0.1", 0))
    port_holder.append(server.getsockname()[1])

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def relay(client: socket.socket) -> None:
        daemon = socket.socket(socket.AF_UNIX)
        daemon.connect(target)
        threading.Thread(target=pump, args=(daemon, client), daemon=True).start()
        pump(client, daemon)

    return serve_connections(server, stop, relay)


@pytest.mark.parametrize(("host", "env", "expected"), [
    ("tcp://10.0.0.5:2375", {}, "tcp:10.0.0.5:2375"),
    ("tcp://daemon", {}, "tcp:daemon:2375"),
    ("tcp://[::1]:2380", {}, "tcp:::1:2380"),
    ("tcp://daemon:2376", {"DOCKER_TLS_VERIFY": "1"}, None),
    ("tcp://daemon:2376", {"DOCKER_CERT_PATH": "/certs"}, None),
    ("ssh://me@daemon", {}, None),
])
def test_where_the_kill_9_watchdog_reaches_the_daemon(monkeypatch, host, env, expected) -> None:
    from blockkit.runner._docker_client import _daemon_address

    for name in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_HOST", host)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _daemon_address() == expected


@pytest.mark.docker
@pytest.mark.slow
def test_kill_9_of_a_runner_on_a_tcp_daemon_removes_the_step_container(tmp_path: Path, docker_client, base_image) -> None:
    """The watchdog also speaks plain tcp:// (the daemon here is reached through a relay to its socket)."""
    port: list[int] = []
    stop = threading.Event()
    _relay(port, stop)
    marker, wf = marked_workflow(tmp_path, "hang", source=False)
    env = {**os.environ, "BLOCKKIT_RUNS_DIR": str(tmp_path / "runs"), "DOCKER_HOST": f"tcp://127.0.0.1:{port[0]}"}
    for name in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        env.pop(name, None)
    proc = subprocess.Popen(cli_command("run", str(wf), "-e", "docker", "-q"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: len(processes_with(marker)) >= 2, timeout=120)
        proc.kill()
        proc.wait(timeout=10)
        assert wait_for(lambda: docker_client.containers.list(
            ignore_removed=True, all=True, filters={"label": ["blockkit.step=evil"]}) == [], timeout=60), "container left"
        assert wait_for(lambda: processes_with(marker) == [], timeout=30), "block processes left"
    finally:
        if proc.poll() is None:
            proc.kill()
        stop.set()
        for container in docker_client.containers.list(ignore_removed=True, all=True, filters={"label": ["blockkit.step=evil"]}):
            container.remove(force=True)
