"""run.json and provenance.json as pure documents, and the redacted workflow copy."""

from __future__ import annotations

from pathlib import Path

from blockkit.runner._provenance import provenance_document, run_document
from blockkit.runner._run_folder import StepRecord
from blockkit.runner._workflow import Workflow


def _workflow(tmp_path: Path) -> Workflow:
    path = tmp_path / "wf.yaml"
    path.write_text("name: w\nsteps: {}\n")
    return Workflow(name="w", steps=[], input="in/", output="s3://b/out", path=path)


def test_the_run_document_holds_every_record_and_the_state(tmp_path: Path) -> None:
    records = {"b": StepRecord(name="b", status="ok", parts=[{"name": "f", "status": "reused"}]),
               "a": StepRecord(name="a", status="failed", exit_code=3)}
    run = run_document(run_id="r1", workflow=_workflow(tmp_path), engine="process", status="failed", started=1.0,
                       runner={"pid": 1}, records=records, now=2.0)
    assert run["workflow_path"] == str((tmp_path / "wf.yaml").resolve())
    assert (run["status"], run["started"], run["updated"], run["runner"]) == ("failed", 1.0, 2.0, {"pid": 1})
    assert list(run["steps"]) == ["b", "a"] and run["steps"]["a"]["exit_code"] == 3
    assert run["steps"]["b"]["parts"] == [{"name": "f", "status": "reused"}]


def test_provenance_lists_steps_in_plan_order_and_ends_only_when_done(tmp_path: Path) -> None:
    records = {"b": StepRecord(name="b"), "a": StepRecord(name="a")}
    wf = _workflow(tmp_path)
    run = run_document(run_id="r1", workflow=wf, engine="docker", status="running", started=1.0,
                       runner={}, records=records, now=2.0)
    prov = provenance_document(run, workflow=wf, workflow_sha256="abc", blockkit_version="9", step_order=["a", "b"],
                               now=3.0)
    assert [s["name"] for s in prov["steps"]] == ["a", "b"] and prov["ended"] is None
    assert prov["workflow"] == {"name": "w", "path": run["workflow_path"], "sha256": "abc", "input": "in/",
                                "output": "s3://b/out"}
    done = provenance_document({**run, "status": "ok"}, workflow=wf, workflow_sha256=None, blockkit_version="9",
                               step_order=["a", "b"], now=3.0)
    assert done["ended"] == 3.0 and done["engine"] == "docker" and done["blockkit_version"] == "9"


def test_a_workflow_without_a_file_has_no_path() -> None:
    wf = Workflow(name="w", steps=[])
    run = run_document(run_id="r", workflow=wf, engine="process", status="ok", started=0, runner={}, records={}, now=0)
    assert run["workflow_path"] is None
