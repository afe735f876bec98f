"""report.html from real run folders, checked as a file: escaping, links, caps, the CLI around it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from blockkit.contract.errors import WorkflowError
from blockkit.report import write_report
from blockkit.report._model import LOG_TAIL_BYTES, read_report
from tests.report.conftest import cli
from tests.report.hostile import EVIL_ID, EVIL_LOG, EVIL_PROP, hostile_workflow

pytestmark = pytest.mark.slow  # each test makes real runs through the command


def _data(html: str) -> dict:
    """The JSON the page script reads, as the browser would decode it."""
    found = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', html, re.S)
    assert found is not None
    data = json.loads(found.group(1))
    for i, step in enumerate(data["steps"]):  # each step's details, parsed when it is shown
        heavy = re.search(rf'<script id="step-data-{i}" type="application/json">(.*?)</script>', html, re.S)
        step.update(json.loads(heavy.group(1)))
    return data


def _run(tmp_path: Path, *, fail: bool) -> Path:
    wf = hostile_workflow(tmp_path, fail=fail)
    done = cli("run", wf, "--engine", "process", "--runs-dir", tmp_path / "runs", "-q")
    assert done.returncode == (1 if fail else 0), done.stderr
    [run] = [p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file()]
    return run


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("hostile"), fail=True)


def test_every_run_gets_a_report_and_the_end_of_run_line_names_it(tmp_path: Path) -> None:
    wf = hostile_workflow(tmp_path, fail=False)
    done = cli("run", wf, "--engine", "process", "--runs-dir", tmp_path / "runs", "-q")
    assert done.returncode == 0, done.stderr
    [run] = [p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file()]
    assert f"report: {run / 'report.html'}" in done.stderr.splitlines()
    as_json = cli("run", wf, "--engine", "process", "--runs-dir", tmp_path / "runs", "--json")
    summary = json.loads(as_json.stdout)
    assert summary["report"] == str(Path(summary["run_dir"]) / "report.html") and Path(summary["report"]).is_file()


def test_a_failed_run_gets_a_report_too(hostile_run: Path, tmp_path: Path) -> None:
    assert (hostile_run / "report.html").is_file()
    data = _data((hostile_run / "report.html").read_text())
    failed = {s["name"]: s for s in data["steps"]}["up"]
    assert failed["status"] == "failed" and "RuntimeError: boom" in failed["detail"]
    assert "RuntimeError: boom" in failed["log"][failed["error_line"]]
    again = cli("run", hostile_workflow(tmp_path, fail=True), "-e", "process", "--runs-dir", tmp_path / "r", "--json")
    assert again.returncode == 1 and json.loads(again.stdout)["report"].endswith("report.html")


def test_strings_from_the_run_folder_never_become_markup(hostile_run: Path) -> None:
    html = (hostile_run / "report.html").read_text()
    # Only the page's own script elements: JSON data (not executed) and the page script last.
    tags = re.findall(r"<script[^>]*>", html)
    assert tags == ['<script id="report-data" type="application/json">', '<script id="step-data-0" type="application/json">',
                    '<script id="step-data-1" type="application/json">', "<script>"]
    data_part = html.split('<script id="report-data"')[1].rsplit("<script>", 1)[0]
    for evil in (EVIL_ID, EVIL_PROP, EVIL_LOG, "<img", "</script><s"):
        assert evil not in data_part
    data = _data(html)
    evil = {s["name"]: s for s in data["steps"]}["evil"]
    assert evil["features"][0]["id"] == EVIL_ID  # shown as the very same text
    assert evil["features"][0]["props"]["note"] == EVIL_PROP
    assert EVIL_LOG in evil["log"]


def test_content_security_policy_allows_only_the_pages_own_script_and_no_network(hostile_run: Path) -> None:
    html = (hostile_run / "report.html").read_text()
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    script = html.rsplit("<script>", 1)[1].split("</script>")[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy.replace("&#x27;", "'")
    assert "default-src 'none'" in policy.replace("&#x27;", "'") and "connect-src 'none'" in policy.replace("&#x27;", "'")
    urls = set(re.findall(r"(?:https?|wss?)://[^\s\"')]*", html))
    assert urls == {"http://www.w3.org/2000/svg"}  # a namespace name, never fetched


def test_quicklooks_are_relative_files_of_the_run_and_links_are_ignored(hostile_run: Path) -> None:
    data = _data((hostile_run / "report.html").read_text())
    evil = {s["name"]: s for s in data["steps"]}["evil"]
    assert [q["src"] for q in evil["quicklooks"]] == ["steps/evil/quicklooks/f1.png"]  # links are never read
    assert evil["quicklooks"][0]["bbox"] == pytest.approx([13.01, 52.0, 13.018, 52.008])


def test_a_report_elsewhere_inlines_its_images(hostile_run: Path, tmp_path: Path) -> None:
    done = cli("runs", "report", "latest", "--runs-dir", hostile_run.parent, "-o", tmp_path / "elsewhere.html")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "elsewhere.html")
    data = _data((tmp_path / "elsewhere.html").read_text())
    [ql] = {s["name"]: s for s in data["steps"]}["evil"]["quicklooks"]
    assert ql["src"].startswith("data:image/png;base64,")
    assert (hostile_run / "steps" / "evil" / "quicklooks" / "f1.png").read_bytes() == base64.b64decode(ql["src"].split(",", 1)[1])


def test_runs_report_open_hands_the_file_to_the_browser(hostile_run: Path, tmp_path: Path) -> None:
    opened = tmp_path / "opened.txt"
    fake = tmp_path / "fake-browser"
    fake.write_text(f"#!/bin/sh\necho \"$1\" > {opened}\n")
    fake.chmod(0o755)
    env = {**os.environ, "BROWSER": str(fake)}
    import subprocess
    import sys

    done = subprocess.run([str(Path(sys.executable).with_name("blockkit")), "runs", "report", hostile_run.name,
                           "--runs-dir", str(hostile_run.parent), "--open"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert opened.read_text().strip() == (hostile_run / "report.html").as_uri()


def test_huge_logs_are_read_from_their_end_only(hostile_run: Path, tmp_path: Path) -> None:
    log = hostile_run / "logs" / "evil.log"
    with log.open("a") as handle:
        for i in range(200_000):
            handle.write(f"line {i} " + "x" * 40 + "\n")
    data = read_report(hostile_run)
    evil = {s["name"]: s for s in data.steps}["evil"]
    assert evil["log_cut"] and evil["log"][-1].startswith("line 199999 ")
    assert sum(len(line) + 1 for line in evil["log"]) <= LOG_TAIL_BYTES


def test_paths_out_of_the_step_and_symlinked_files_are_not_read(tmp_path: Path) -> None:
    run = _run(tmp_path, fail=False)
    output = run / "steps" / "up" / "output"
    secret = tmp_path / "outside.geojson"
    secret.write_text(json.dumps({"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}}))
    doc = json.loads((output / "data.json").read_text())
    doc["features"][0]["properties"]["up42.data_path"] = "../../../../outside.geojson"
    (output / "data.json").unlink()
    (output / "data.json").write_text(json.dumps(doc))
    (output / "link.geojson").symlink_to(secret)
    doc["features"][1]["properties"]["up42.data_path"] = "link.geojson"
    (output / "data.json").write_text(json.dumps(doc))
    up = {s["name"]: s for s in read_report(run).steps}["up"]
    assert up["vectors"] == [] and len(up["features"]) == 3
    (run / "steps" / "evil" / "output" / "data.json").unlink()
    (run / "steps" / "evil" / "output" / "data.json").symlink_to(output / "data.json")
    evil = {s["name"]: s for s in read_report(run).steps}["evil"]
    assert evil["features"] == [] and "symlink" in evil["features_problem"]


def test_a_damaged_run_json_is_one_line_with_a_contract_code(tmp_path: Path) -> None:
    run = _run(tmp_path, fail=False)
    (run / "run.json").write_text("{not json")
    with pytest.raises(WorkflowError):
        write_report(run)
    done = cli("runs", "report", run.name, "--runs-dir", run.parent)
    assert done.returncode == 4 and done.stderr.startswith("[WRONG_INPUT_ERROR]") and len(done.stderr.splitlines()) == 1
    (run / "run.json").write_text(json.dumps({"steps": {"a": "not a step", "b": {"status": 7, "started": "x"}}}))
    assert len(read_report(run).steps) == 2  # odd values are shown as text, never a crash


def test_a_reused_step_shows_the_quicklooks_of_the_run_that_made_them(tmp_path: Path) -> None:
    wf = hostile_workflow(tmp_path, fail=False)
    for _ in range(2):
        done = cli("run", wf, "--engine", "process", "--runs-dir", tmp_path / "runs", "--json")
        assert done.returncode == 0, done.stderr
    second = Path(json.loads(done.stdout)["run_dir"])
    data = _data((second / "report.html").read_text())
    evil = {s["name"]: s for s in data["steps"]}["evil"]
    assert evil["status"] == "cached" and evil["cached_from"].endswith("/steps/evil/output")
    [ql] = evil["quicklooks"]  # linked into this run's folder with the reused output, checked against its hashes
    assert (second / ql["src"]).is_file() and len(evil["features"]) == 3


def test_a_report_written_while_the_run_goes_on_shows_the_running_steps_progress(tmp_path: Path) -> None:
    run = _run(tmp_path, fail=False)
    data = json.loads((run / "run.json").read_text())
    data["status"] = "running"
    data["steps"]["up"].update(status="running", ended=None, exit_code=None)
    (run / "run.json").write_text(json.dumps(data))
    with (run / "logs" / "up.log").open("a") as handle:
        handle.write("BLOCKKIT_PROGRESS 2/10\nsome output\nBLOCKKIT_PROGRESS 3/10\nmore output\n")
    done = cli("runs", "report", run.name, "--runs-dir", run.parent)
    assert done.returncode == 0, done.stderr
    report = _data((run / "report.html").read_text())
    assert report["run"]["status"] == "running"
    assert {s["name"]: s for s in report["steps"]}["up"]["progress"] == [3, 10]
