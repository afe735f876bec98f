"""Fan-in on the docker engine: upstream outputs are mounted, not linked, and results match the process engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from blockkit.runner._run import RunFailed
from blockkit.runner._session import RunRequest, run_request

from .blocks import make_blocks

pytestmark = pytest.mark.docker


def _fan_in(tmp_path: Path, blocks: dict[str, Path]) -> Path:
    wf = tmp_path / "fanin.yaml"
    wf.write_text(
        "name: fanin\nsteps:\n"
        f"  a: {{block: {blocks['source']}, params: {{count: 1, text: aaa}}}}\n"
        f"  b: {{block: {blocks['source']}, params: {{count: 2, text: bbb}}, after: []}}\n"
        f"  up: {{block: {blocks['upper']}, after: [a, b], propagate: true}}\n"
    )
    return wf


def test_docker_fan_in_mounts_upstreams_and_matches_the_process_engine(tmp_path: Path, docker_client, base_image) -> None:
    blocks = make_blocks(tmp_path / "blocks")
    wf = _fan_in(tmp_path, blocks)
    runs = {}
    for engine in ("process", "docker"):
        summary = run_request(RunRequest(target=wf, engine=engine, runs_dir=tmp_path / engine, use_cache=False))
        runs[engine] = Path(summary["run_dir"])
        prov = json.loads((runs[engine] / "provenance.json").read_text())
        assert prov["engine"] == engine and [s["status"] for s in prov["steps"]] == ["ok"] * 3

    docker_input = runs["docker"] / "steps/up/input"
    # Mount points only: the docker engine bind-mounts each upstream output read-only there.
    assert sorted(p.name for p in docker_input.iterdir()) == ["a", "b", "data.json"]
    assert list((docker_input / "a").iterdir()) == [] and list((docker_input / "b").iterdir()) == []
    # The process engine links the files into the input folder instead.
    assert (runs["process"] / "steps/up/input/b/item1.txt").is_file()

    outputs = {e: json.loads((r / "steps/up/output/data.json").read_text()) for e, r in runs.items()}
    assert outputs["docker"]["features"] == outputs["process"]["features"]
    assert {f["id"] for f in outputs["docker"]["features"]} >= {"a:item0", "b:item0", "b:item1"}
    hashes = {
        e: json.loads((r / "provenance.json").read_text())["steps"][2]["outputs"] for e, r in runs.items()
    }
    assert hashes["docker"] == hashes["process"]
    # Forwarded upstream files are hard links to the upstream output, not copies.
    forwarded = runs["docker"] / "steps/up/output/b/item1.txt"
    assert forwarded.stat().st_ino == (runs["docker"] / "steps/b/output/item1.txt").stat().st_ino


@pytest.mark.parametrize(
    ("params", "extra", "code", "name"),
    [
        ("{behaviour: crash}", "", 1, "UNEXPECTED_ERROR"),
        ("{behaviour: exit, code: 2}", "", 2, "INPUT_PARAMETERS_ERROR"),
        ("{behaviour: exit, code: 3}", "", 3, "NO_INPUT_ERROR"),
        ("{behaviour: exit, code: 4}", "", 4, "WRONG_INPUT_ERROR"),
        ("{behaviour: exit, code: 5}", "", 5, "API_CONNECTION_ERROR"),
        ("{behaviour: exit, code: 6}", "", 6, "NO_OUTPUT_ERROR"),
        ("{behaviour: bad-output}", "", 6, "NO_OUTPUT_ERROR"),
        ("{behaviour: sleep}", ", timeout: 3", 124, "TIMEOUT"),
        ("{behaviour: alloc}", "", 137, "OUT_OF_MEMORY"),
    ],
    ids=["crash", "exit2", "exit3", "exit4", "exit5", "exit6", "bad-output", "timeout", "oom"],
)
def test_docker_faults_stop_the_run_cleanly_and_resume_finishes_it(
    tmp_path: Path, docker_client, base_image, params: str, extra: str, code: int, name: str
) -> None:
    blocks = make_blocks(tmp_path / "blocks")
    wf = tmp_path / "faulty.yaml"
    wf.write_text(
        "name: faulty\nsteps:\n"
        f"  make: {{block: {blocks['source']}, params: {{count: 2}}}}\n"
        f"  up: {{block: {blocks['upper']}, params: {params}{extra}}}\n"
    )
    runs = tmp_path / "runs"
    with pytest.raises(RunFailed) as info:
        run_request(RunRequest(target=wf, engine="docker", runs_dir=runs))
    err = info.value
    assert err.step == "up" and err.step_exit == code
    assert err.message.startswith(f"step 'up' failed with exit code {code}") and f"({name})" not in err.message
    assert (err.run_dir / "steps/make/output/item1.txt").read_text() == "hello 1\n"  # earlier output intact
    prov = json.loads((err.run_dir / "provenance.json").read_text())
    assert prov["status"] == "failed" and prov["steps"][1]["exit_name"] == name
    assert docker_client.containers.list(ignore_removed=True, all=True, filters={"label": ["blockkit.step=up"]}) == []

    wf.write_text(wf.read_text().replace(f"params: {params}{extra}", "params: {behaviour: ok}"))
    summary = run_request(RunRequest(target=None, engine="docker", runs_dir=runs, resume=err.run_dir.name))
    assert summary["run_id"] == err.run_dir.name
    assert summary["steps"]["make"]["status"] == "ok" and summary["steps"]["up"]["status"] == "ok"
    assert (err.run_dir / "steps/up/output/item1.txt.upper").read_text() == "HELLO 1\n"


@pytest.mark.parametrize("params, extra", [("{behaviour: sleep}", ", timeout: 2"), ("{behaviour: exit, code: 2}", "")],
                         ids=["timeout", "exit2"])
def test_both_engines_end_a_failed_step_with_the_same_words(tmp_path: Path, docker_client, base_image,
                                                            params: str, extra: str) -> None:
    """The failure line and the log's last line do not depend on the engine."""
    blocks = make_blocks(tmp_path / "blocks")
    wf = tmp_path / "faulty.yaml"
    wf.write_text(f"name: faulty\nsteps:\n  make: {{block: {blocks['source']}, params: {{count: 1}}}}\n"
                  f"  up: {{block: {blocks['upper']}, params: {params}{extra}}}\n")
    seen = {}
    for engine in ("process", "docker"):
        with pytest.raises(RunFailed) as info:
            run_request(RunRequest(target=wf, engine=engine, runs_dir=tmp_path / engine))
        log = (info.value.run_dir / "logs/up.log").read_text().splitlines()
        seen[engine] = [re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", line) for line in (info.value.message, log[-1])]
    assert seen["process"] == seen["docker"], seen


def test_a_docker_run_removes_containers_of_a_killed_runner_and_says_so(tmp_path: Path, docker_client, base_image) -> None:
    import subprocess

    from blockkit.runner._build import build_block_image
    from blockkit.runner._docker_engine import owner_labels

    blocks = make_blocks(tmp_path / "blocks")

    image = build_block_image(blocks["source"], client=docker_client).tag
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = docker_client.containers.create(
        image, ["sleep", "60"], network_mode="none", labels={**owner_labels(), "blockkit.pid": str(dead.pid)},
    )
    said: list[str] = []
    try:
        run_request(RunRequest(target=blocks["source"], engine="docker", runs_dir=tmp_path / "runs", on_message=said.append))
        assert orphan.name not in [c.name for c in docker_client.containers.list(ignore_removed=True, all=True)]
        assert any("left by a blockkit run that was killed" in line and orphan.name in line for line in said)
    finally:
        try:
            orphan.remove(force=True)
        except Exception:  # noqa: BLE001 - removed by the run, as it should be
            pass


def test_a_container_that_cannot_start_fails_the_step_cleanly(tmp_path: Path, docker_client, base_image) -> None:
    blocks = make_blocks(tmp_path / "blocks")
    manifest_path = blocks["source"] / "UP42Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "blockkit": {"command": ["/nonexistent/prog"]}}))
    with pytest.raises(RunFailed) as info:
        run_request(RunRequest(target=blocks["source"], engine="docker", runs_dir=tmp_path / "runs"))
    err = info.value
    assert err.step_exit == 1 and "the docker engine could not run the step" in err.message
    assert "/nonexistent/prog" in err.message and "http+docker" not in err.message
    assert json.loads((err.run_dir / "run.json").read_text())["status"] == "failed"
    assert docker_client.containers.list(ignore_removed=True, all=True, filters={"label": ["blockkit.step=source"]}) == []


@pytest.mark.parametrize("mistake", ["output not empty", "input missing"])
def test_a_cheap_check_fails_before_any_image_is_checked_or_built(tmp_path: Path, docker_client, base_image,
                                                                   monkeypatch, mistake: str) -> None:
    """A typo is reported at once, not after the blocks' images are built (minutes, for a new block)."""
    from blockkit.contract.errors import WorkflowError
    from blockkit.runner import _build

    blocks = make_blocks(tmp_path / "blocks")
    built: list[object] = []
    monkeypatch.setattr(_build, "build_block_image", lambda *a, **k: built.append(a) or pytest.fail("built"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    data = tmp_path / "data"
    data.mkdir()
    (data / "data.json").write_text('{"type": "FeatureCollection", "features": []}')
    source = ("input: nowhere\n" if mistake == "input missing"
              else f"input: {json.dumps(str(data))}\noutput: {json.dumps(str(out))}\n")
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"name: early\n{source}steps:\n  up: {{block: {json.dumps(str(blocks['upper']))}}}\n")
    with pytest.raises(WorkflowError, match="is not empty|is not a folder"):
        run_request(RunRequest(target=workflow, engine="docker", runs_dir=tmp_path / "runs"))
    assert built == []
