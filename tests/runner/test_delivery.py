"""Delivering a run's results (stage-out to a local folder) and what a run leaves behind.

A local `--output` is filled by one rename of a complete folder, while the run still holds its
lock and before run.json says ok; a failed delivery fails the run (resumable). A staged-in
input lives as long as its session; a resume keeps the run's engine and sweeps what a killed
runner left in the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blockkit.contract.errors import RunFailed, WorkflowError
from blockkit.runner._run import RunFailed as RunnerRunFailed
from blockkit.runner._session import RunRequest, run_request


def _workflow(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(body)
    return path


def _chain(tmp_path: Path, blocks: dict[str, Path], upper: str = "{behaviour: ok}") -> Path:
    return _workflow(tmp_path, f"name: chain\nsteps:\n  make: {{block: {blocks['source']}, params: {{count: 2}}}}\n"
                               f"  up: {{block: {blocks['upper']}, params: {upper}}}\n")


def test_a_filled_target_is_never_mixed_with_another_run_s_files(tmp_path: Path, blocks) -> None:
    """Two runs that passed the start check deliver to one folder: the second fails cleanly, the first's stays whole."""
    from blockkit.runner._staging import deliver_local

    first = run_request(RunRequest(target=_chain(tmp_path, blocks), engine="process", runs_dir=tmp_path / "runs",
                                   output=str(tmp_path / "out")))
    assert first["outputs"] == [str(tmp_path / "out")]
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    second = run_request(RunRequest(target=_chain(tmp_path, blocks), engine="process", runs_dir=tmp_path / "runs",
                                    use_cache=False))

    class Done:  # the second run, as it stands when it delivers
        folder = type("F", (), {"output_dir": lambda self, name: Path(second["steps"][name]["output_dir"])})()

    with pytest.raises(WorkflowError, match="output folder .*/out is not empty"):
        deliver_local(Done(), ["up"], tmp_path / "out")  # type: ignore[arg-type]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []  # its own files went with it
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(WorkflowError, match="not a folder"):
        deliver_local(Done(), ["up"], tmp_path / "link")  # type: ignore[arg-type]
    assert not (tmp_path / "elsewhere").exists()


def test_a_killed_run_s_partial_folder_beside_the_target_goes_with_the_next_delivery(tmp_path: Path, blocks) -> None:
    dead = tmp_path / ".out.blockkit-partial-0123456789abcdef"
    (dead / "half").mkdir(parents=True)  # what a kill -9 during delivery leaves (its lock is free)
    run_request(RunRequest(target=_chain(tmp_path, blocks), engine="process", runs_dir=tmp_path / "runs",
                           output=str(tmp_path / "out")))
    assert not dead.exists() and (tmp_path / "out" / "data.json").is_file()


def test_several_final_steps_are_delivered_in_one_folder_at_once(tmp_path: Path, blocks) -> None:
    wf = _workflow(tmp_path, f"name: two\nsteps:\n  make: {{block: {blocks['source']}, params: {{count: 1}}}}\n"
                             f"  a: {{block: {blocks['upper']}, after: make}}\n  b: {{block: {blocks['upper']}, after: make}}\n")
    (tmp_path / "out").mkdir()  # an empty folder is replaced
    summary = run_request(RunRequest(target=wf, engine="process", runs_dir=tmp_path / "runs", output=str(tmp_path / "out")))
    assert summary["outputs"] == [str(tmp_path / "out" / "a"), str(tmp_path / "out" / "b")]
    assert (tmp_path / "out/a/item0.txt.upper").read_text() == "HELLO 0\n" and (tmp_path / "out/b/data.json").is_file()


def test_an_existing_empty_folder_is_filled_data_json_last_and_claimed_by_one_run(tmp_path: Path, blocks) -> None:
    import subprocess
    import sys

    from blockkit.runner._staging import deliver_local

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".blockkit-partial-0123456789abcdef").mkdir()  # a killed run's: its lock is free
    summary = run_request(RunRequest(target=_chain(tmp_path, blocks), engine="process", runs_dir=tmp_path / "runs",
                                     output=str(tmp_path / "out")))
    assert summary["outputs"] == [str(tmp_path / "out")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["data.json", "item0.txt.upper", "item1.txt.upper"]

    made = tmp_path / "made"  # a result holding the names delivery uses for itself
    (made / ".blockkit-partial").mkdir(parents=True)
    (made / ".blockkit-partial" / "x").write_text("the block's")
    (made / "data.json").write_text('{"type": "FeatureCollection", "features": []}')

    class Done:
        folder = type("F", (), {"output_dir": lambda self, name: made})()

    (tmp_path / "busy").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               "fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
                               "print('locked', flush=True); time.sleep(600)", str(tmp_path / "busy")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"  # another run delivering there
        with pytest.raises(WorkflowError, match="output folder .*/busy is being filled by another run"):
            deliver_local(Done(), ["up"], tmp_path / "busy")  # type: ignore[arg-type]
    finally:
        holder.kill()
        holder.wait()
    assert list((tmp_path / "busy").iterdir()) == []
    assert deliver_local(Done(), ["up"], tmp_path / "busy") == [str(tmp_path / "busy")]  # type: ignore[arg-type]
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == [".blockkit-partial", "data.json"]
    assert (tmp_path / "busy" / ".blockkit-partial" / "x").read_text() == "the block's"


def test_a_failed_delivery_fails_the_run_and_a_resume_delivers(tmp_path: Path, blocks) -> None:
    """The target's parent is a file: nothing delivered, the run is failed (not ok) and resumable."""
    (tmp_path / "blocker").write_text("a file where the output's parent should be")
    target = tmp_path / "blocker" / "out"
    with pytest.raises(RunFailed, match="every step finished, but the results were not delivered") as info:
        run_request(RunRequest(target=_chain(tmp_path, blocks), engine="process", runs_dir=tmp_path / "runs",
                               output=str(target)))
    assert isinstance(info.value, RunnerRunFailed)
    assert info.value.hints == [f"deliver them with: blockkit run --resume {info.value.run_dir.name} --runs-dir "
                                f"{tmp_path / 'runs'} --output {target}"]
    run = json.loads((info.value.run_dir / "run.json").read_text())
    assert run["status"] == "failed" and {s["status"] for s in run["steps"].values()} == {"ok"}
    (tmp_path / "blocker").unlink()
    summary = run_request(RunRequest(target=None, engine="process", runs_dir=tmp_path / "runs",
                                     resume=info.value.run_dir.name, output=str(target)))
    assert summary["outputs"] == [str(target)] and (target / "item1.txt.upper").read_text() == "HELLO 1\n"
    assert json.loads((info.value.run_dir / "run.json").read_text())["status"] == "ok"


def test_a_block_run_s_delivery_command_names_the_block_and_its_parameters(tmp_path: Path, blocks) -> None:
    (tmp_path / "blocker").write_text("")
    target = tmp_path / "blocker" / "out"
    with pytest.raises(RunFailed) as info:
        run_request(RunRequest(target=blocks["source"], engine="process", runs_dir=tmp_path / "runs", params={"count": 3},
                               output=str(target)))
    run_id = info.value.run_dir.name
    assert info.value.hints == [f"deliver them with: blockkit run {blocks['source']} --resume {run_id} --runs-dir "
                                f"{tmp_path / 'runs'} --params '{{\"count\":3}}' --output {target}"]
    (tmp_path / "blocker").unlink()
    summary = run_request(RunRequest(target=blocks["source"], engine="process", runs_dir=tmp_path / "runs",
                                     params={"count": 3}, resume=run_id, output=str(target)))  # as the hint says
    assert summary["steps"]["source"]["status"] == "ok" and len(list(target.glob("item*.txt"))) == 3


def test_a_staged_in_input_goes_with_its_session(tmp_path: Path, blocks) -> None:
    """Every run (and resume) stages its URI input anew: the copy must not stay in the runs folder."""
    source = tmp_path / "scene"
    first = run_request(RunRequest(target=blocks["source"], engine="process", runs_dir=tmp_path / "r0",
                                   params={"count": 2}, output=str(source)))
    assert first["outputs"]
    wf = _workflow(tmp_path, f"name: staged\ninput: {source.as_uri()}\nsteps:\n  up: {{block: {blocks['upper']}}}\n")
    summary = run_request(RunRequest(target=wf, engine="process", runs_dir=tmp_path / "runs", output=str(tmp_path / "o")))
    assert (tmp_path / "o" / "item0.txt.upper").read_text() == "HELLO 0\n"
    assert Path(summary["run_dir"]).is_dir() and list((tmp_path / "runs" / "staged").iterdir()) == []
    odd = _workflow(tmp_path, f"name: ../../escaped\ninput: {source.as_uri()}\nsteps:\n  up: {{block: {blocks['upper']}}}\n")
    said: list[str] = []
    run_request(RunRequest(target=odd, engine="process", runs_dir=tmp_path / "runs", on_message=said.append))
    assert any(f"to {tmp_path / 'runs' / 'staged'}/------escaped-" in line for line in said), said  # never outside
    assert not list(tmp_path.glob("escaped-*")) and not list((tmp_path / "runs").glob("escaped-*"))
    failing = _workflow(tmp_path, f"name: staged\ninput: {source.as_uri()}\nsteps:\n"
                                  f"  up: {{block: {blocks['upper']}, params: {{behaviour: exit, code: 4}}}}\n")
    with pytest.raises(RunFailed):
        run_request(RunRequest(target=failing, engine="process", runs_dir=tmp_path / "runs"))
    assert list((tmp_path / "runs" / "staged").iterdir()) == []


def test_a_resume_keeps_the_run_s_engine_and_sweeps_a_killed_runner_s_leftovers(tmp_path: Path, blocks) -> None:
    wf = _chain(tmp_path, blocks, "{behaviour: exit, code: 3}")
    with pytest.raises(RunFailed) as info:
        run_request(RunRequest(target=wf, engine="process", runs_dir=tmp_path / "runs"))
    run_dir = info.value.run_dir
    # What a kill -9 leaves: an atomic write's temp file, a docker hosts file.
    (run_dir / ".provenance.json.0123456789abcdef.tmp").write_text("{")
    (run_dir / "steps" / "up" / ".blockkit-hosts-blockkit-up-1234").write_text("127.0.0.1 localhost\n")
    wf.write_text(wf.read_text().replace("{behaviour: exit, code: 3}", "{behaviour: ok}"))
    messages: list[str] = []
    summary = run_request(RunRequest(target=None, engine="auto", runs_dir=tmp_path / "runs", resume=run_dir.name,
                                     on_message=messages.append))
    assert summary["engine"] == "process" and messages[0].startswith("engine: process engine")  # not docker
    assert not list(run_dir.glob(".*.tmp")) and not list(run_dir.glob("steps/*/.blockkit-hosts-*"))
    assert json.loads((run_dir / "run.json").read_text())["engine"] == "process"


def test_a_resume_on_another_engine_says_that_finished_steps_run_again(tmp_path: Path, blocks) -> None:
    from blockkit.runner._session import resumed_engine

    wf = _chain(tmp_path, blocks, "{behaviour: exit, code: 3}")
    with pytest.raises(RunFailed) as info:
        run_request(RunRequest(target=wf, engine="process", runs_dir=tmp_path / "runs"))
    said: list[str] = []
    request = RunRequest(target=None, engine="docker", runs_dir=tmp_path / "runs", resume=info.value.run_dir.name)
    assert resumed_engine(request, tmp_path / "runs", said.append) == "docker"
    assert said == [f"warning: run {info.value.run_dir.name} ran on the process engine so far; on the docker engine "
                    "its finished steps run again (the engine is part of their cache keys)"]
