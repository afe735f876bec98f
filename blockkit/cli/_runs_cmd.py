"""`blockkit runs list|show|logs|report|rm|gc`: look at run folders and clean them up."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from blockkit.cli._console import fail
from blockkit.runner._run_folder import resume_command
from blockkit.contract.errors import BlockkitError, ValidationError

if TYPE_CHECKING:
    from blockkit.runner._run import RunFolder

runs_app = typer.Typer(help="List, inspect, report on and remove runs. RUN_ID may be a unique prefix or `latest`.",
                       no_args_is_help=True)


def _root(runs_dir: Path | None) -> Path:
    from blockkit.runner._run import default_runs_dir

    return (runs_dir or default_runs_dir()).resolve()


def _find(runs_dir: Path | None, run_id: str) -> RunFolder:
    """The run folder for an id, a unique prefix or `latest`; a one-line contract error otherwise."""
    from blockkit.runner._housekeeping import resolve_run

    try:
        return resolve_run(_root(runs_dir), run_id)
    except BlockkitError as err:
        fail(err)


@runs_app.command("list")
def list_runs(runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
              as_json: bool = typer.Option(False, "--json", help="one JSON object per run, for machines"),
              status: Optional[str] = typer.Option(None, "--status", help="only runs with this status (ok, failed, running, interrupted; comma-separated)"),
              workflow: Optional[str] = typer.Option(None, "--workflow", help="only runs of this workflow (its name)")) -> None:
    """List runs, newest first: id, workflow, status, engine, steps done, start time."""
    from blockkit.runner._logfilter import neutralise
    from blockkit.runner._run import RUN_FILE

    unknown = sorted({s.strip() for s in (status or "").split(",") if s.strip()} - set(RUN_STATUSES))
    if unknown:  # a typo (`--status fail`) must not look like "no failed runs"
        fail(ValidationError(f"--status {', '.join(unknown)}: not a run status (choose from {', '.join(RUN_STATUSES)})"),
             as_json=as_json)
    root = _root(runs_dir)
    paths = sorted(root.glob(f"*/{RUN_FILE}"), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []
    rows = _filtered([_summary(path) for path in paths], status, workflow)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no runs in {root}" + (" matching the filters" if status or workflow else ""))
        return
    # Plain aligned columns (like `docker ps`): the id is what `runs show|logs` and
    # `run --resume` take, so nothing is ever cut to fit a terminal.
    header = {"run_id": "RUN ID", "workflow": "WORKFLOW", "status": "STATUS", "engine": "ENGINE",
              "steps": "STEPS", "started": "STARTED"}
    # run.json holds what a workflow file named (its `name:` may be any text): no terminal escapes.
    table = [header] + [{k: neutralise(str(row.get(k, ""))) for k in header} for row in rows]
    widths = {k: max(len(r[k]) for r in table) for k in header}
    for r in table:
        typer.echo("  ".join(r[k].ljust(widths[k]) for k in header).rstrip())


#: What `runs list` shows as a run's status (`_status`).
RUN_STATUSES = ("ok", "failed", "running", "interrupted")


def _filtered(rows: list[dict[str, str]], status: str | None, workflow: str | None) -> list[dict[str, str]]:
    """The rows whose status is one of `status` (comma-separated) and whose workflow is `workflow`."""
    if status:
        wanted = {s.strip() for s in status.split(",") if s.strip()}
        rows = [r for r in rows if r.get("status") in wanted]
    if workflow:
        rows = [r for r in rows if r.get("workflow") == workflow]
    return rows


def _summary(path: Path) -> dict[str, str]:
    """One run's line; a broken run.json is reported, not fatal."""
    from blockkit.runner._run import RunFolder

    try:
        run = RunFolder(path.parent).read_json(path.name)
        steps = run.get("steps", {})
        done = sum(1 for s in steps.values() if s["status"] in ("ok", "cached"))
        return {
            "run_id": path.parent.name,
            "workflow": str(run["workflow"]),
            "status": _status(path.parent, run),
            "engine": str(run["engine"]),
            "steps": f"{done}/{len(steps)}",
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["started"])),
        }
    except (BlockkitError, KeyError, TypeError, AttributeError, ValueError) as exc:
        return {"run_id": path.parent.name, "workflow": "?", "status": f"unreadable {path.name} ({type(exc.__cause__ or exc).__name__})"}


def _status(run_dir: Path, run: dict) -> str:
    """The run's status; a `running` run whose runner is gone is `interrupted` (with the resume command)."""
    from blockkit.runner._lock import runner_gone

    status = str(run["status"])
    if status == "running" and runner_gone(run_dir, run.get("runner")):
        return f"interrupted (runner gone; resume with: {resume_command(run_dir)})"
    return status


@runs_app.command("show")
def show_run(run_id: str, runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
             provenance: bool = typer.Option(False, "--provenance", help="print provenance.json")) -> None:
    """Show a run's steps (status, exit code, features, time) or its provenance."""
    from blockkit.contract.errors import WorkflowError
    from blockkit.runner._logfilter import neutralise
    from blockkit.runner._run import PROVENANCE_FILE, RUN_FILE

    folder = _find(runs_dir, run_id)
    try:
        if provenance:
            typer.echo(json.dumps(folder.read_json(PROVENANCE_FILE), indent=2))
            return
        run = folder.read_json(RUN_FILE)
        lines = _show_lines(run, folder.path)
    except BlockkitError as err:
        fail(err)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        fail(WorkflowError(f"{folder.path / RUN_FILE} is damaged ({type(exc).__name__}: {exc}); "
                           "the run folder's outputs and logs are still there"))
    for line in lines:
        typer.echo(neutralise(line))  # the workflow name and step details come from run.json as written


def _show_lines(run: dict[str, Any], path: Path) -> list[str]:
    """The lines of `runs show` (raises KeyError/TypeError/ValueError on a damaged run.json)."""
    from blockkit.contract._progress import parse_progress
    from blockkit.report._model import log_tail

    steps = run["steps"]
    if not isinstance(steps, dict):
        raise TypeError("'steps' is not an object")
    lines = [f"run {run['run_id']}  workflow {run['workflow']}  status {_status(path, run)}  engine {run['engine']}",
             f"folder {path}"]
    report = path / "report.html"
    if report.is_file():
        lines.append(f"report {report}")
    for name, step in steps.items():
        started, ended = step.get("started"), step.get("ended")
        status = str(step["status"])
        if status == "running" and isinstance(started, (int, float)):
            seconds = f"running for {time.time() - float(started):.0f} s"
            for line in reversed(log_tail(path / "logs" / f"{name}.log")[0]):
                found = parse_progress(line)
                if found:
                    seconds += f", {found[0]}/{found[1]} done"
                    break
            lines.append(f"  {name:<16} {status:<8} {seconds}")
            continue
        took = f"{float(ended) - float(started):.1f} s" if ended and started else "-"
        exit_text = f"exit {step['exit_code']} ({step['exit_name']})" if step.get("exit_code") is not None else "-"
        features = f"{step['features_out']} feature(s)" if step.get("features_out") is not None else "-"
        lines.append(f"  {name:<16} {status:<8} {exit_text}  {features}  {took}"
                     + (f"  {step['detail']}" if step.get("detail") else ""))
    return lines


@runs_app.command("logs")
def run_logs(run_id: str, step: Optional[str] = typer.Argument(None),
             runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
             follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new lines until the run ends")) -> None:
    """Print the logs of a run (all steps, or one); --follow waits for new lines while it runs."""
    folder = _find(runs_dir, run_id)
    logs_dir = folder.path / "logs"
    if step:
        if not _log_names(logs_dir) & {step} and not (follow and step in _step_names(folder)):
            known = ", ".join(sorted(_log_names(logs_dir) | _step_names(folder))) or "none"
            fail(ValidationError(f"run {folder.run_id} has no log for step {step!r}; steps: {known}"))
    offsets: dict[str, int] = {}
    _print_new(logs_dir, step, offsets, final=not follow)
    if not follow:
        return
    from blockkit.runner._housekeeping import read_run_info

    try:
        while True:
            running = read_run_info(folder.path).status == "running"
            _print_new(logs_dir, step, offsets, final=not running)
            if not running:
                break
            time.sleep(0.25)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _log_names(logs_dir: Path) -> set[str]:
    return {p.stem for p in logs_dir.glob("*.log")} if logs_dir.is_dir() else set()


def _step_names(folder: RunFolder) -> set[str]:
    from blockkit.runner._housekeeping import read_run_info

    return set(read_run_info(folder.path).steps)


def _print_new(logs_dir: Path, step: str | None, offsets: dict[str, int], *, final: bool) -> None:
    """Print the lines added to the logs since the offsets; a partial last line waits unless `final`."""
    paths = sorted(logs_dir.glob("*.log")) if logs_dir.is_dir() else []
    for path in paths:
        if (step and path.stem != step) or path.is_symlink():
            continue
        try:
            with path.open("rb") as handle:
                handle.seek(offsets.get(path.stem, 0))
                data = handle.read()
        except OSError:
            continue
        end = len(data) if final else data.rfind(b"\n") + 1  # a partial last line waits for its end
        if end:
            offsets[path.stem] = offsets.get(path.stem, 0) + end
            for line in data[:end].decode("utf-8", errors="replace").splitlines():
                typer.echo(f"{path.stem} | {line}")
    sys.stdout.flush()


@runs_app.command("report")
def run_report(run_id: str, runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
               output: Optional[Path] = typer.Option(None, "--output", "-o", help="write here instead of <run folder>/report.html"),
               open_it: bool = typer.Option(False, "--open", help="open the report in the web browser")) -> None:
    """Write a run's HTML report (one offline file: graph, timeline, maps, quicklooks, logs) and print its path."""
    from blockkit.contract.errors import WorkflowError
    from blockkit.report import write_report

    folder = _find(runs_dir, run_id)
    try:
        if output is not None and output.is_dir():
            raise WorkflowError(f"--output {output} is a folder; give a file name such as report.html")
        path = write_report(folder.path, output)
    except BlockkitError as err:
        fail(err)
    except OSError as exc:
        fail(WorkflowError(f"cannot write the report: {exc.strerror or exc}"))
    typer.echo(str(path))
    if open_it:
        import webbrowser

        if not webbrowser.open(path.as_uri()):
            typer.echo(f"no web browser found; open {path.as_uri()}", err=True)


@runs_app.command("rm")
def remove(run_ids: list[str] = typer.Argument(..., help="run ids, unique prefixes or `latest`"),
           runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
           force: bool = typer.Option(False, "--force", help="also remove runs whose runner is still working in them")) -> None:
    """Remove runs (their folders); cache entries they hold move to another run with the same result or are dropped."""
    from blockkit.runner._housekeeping import read_run_info, remove_runs

    root = _root(runs_dir)
    doomed = {}
    for run_id in run_ids:
        folder = _find(runs_dir, run_id)
        doomed[folder.run_id] = read_run_info(folder.path)
    try:
        if not force:
            _refuse_while_running(root, set(doomed))
        result = remove_runs(root, list(doomed.values()), force=force)
    except BlockkitError as err:
        fail(err)
    _print_removal(result, dry_run=False)


@runs_app.command("gc")
def garbage_collect(keep: Optional[int] = typer.Option(None, "--keep", help="keep the N most recently started runs"),
                    older_than: Optional[str] = typer.Option(None, "--older-than", help="remove runs started longer ago than this (30m, 12h, 7d, 2w)"),
                    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
                    dry_run: bool = typer.Option(False, "--dry-run", help="say what would be removed, remove nothing"),
                    force: bool = typer.Option(False, "--force", help="go on while another run is running")) -> None:
    """Remove old runs (never running ones) and what killed runners left, keeping the cache index consistent."""
    from blockkit.runner._housekeeping import list_runs, parse_age, remove_leftovers, remove_runs, select_for_gc

    root = _root(runs_dir)
    try:
        age = parse_age(older_than) if older_than is not None else None
        now = time.time()
        doomed = select_for_gc(list_runs(root), keep=keep, older_than=age, now=now)
        if doomed and not dry_run and not force:
            _refuse_while_running(root, set())
        result = remove_runs(root, doomed, dry_run=dry_run)
        remove_leftovers(root, result, now=now, dry_run=dry_run)
    except BlockkitError as err:
        fail(err)
    _print_removal(result, dry_run=dry_run)


def _refuse_while_running(root: Path, removing: set[str]) -> None:
    """A running runner rewrites the cache index from its own copy: removing now could leave stale entries."""
    from blockkit.contract.errors import WorkflowError
    from blockkit.runner._housekeeping import running_runs
    from blockkit.runner._lock import RunLock

    busy = running_runs(root, exclude=removing)
    if busy:
        raise WorkflowError(f"run {busy[0].run_id} is being run by {RunLock(busy[0].path).holder_text()} and may "
                            "write the cache index; wait for it to end (or --force to go on anyway)")


def _print_removal(result: Any, *, dry_run: bool) -> None:
    verb = "would remove" if dry_run else "removed"
    for run_id in result.removed:
        typer.echo(f"{verb} {run_id}")
    kinds = ((result.unfinished, "no run.json: its runner died while starting it", "run folder(s) without run.json"),
             (result.temp_files, "temp file of a killed runner", "temp file(s)"),
             (result.staged, "staged-in input of a killed runner", "staged-in input(s)"))
    for names, why, _ in kinds:
        for name in names:
            typer.echo(f"{verb} {name} ({why})")
    leftovers = "".join(f", {len(names)} {counted}" for names, _, counted in kinds if names)
    typer.echo(f"{verb} {len(result.removed)} run(s){leftovers}, {result.freed_bytes / 1e6:.1f} MB; cache entries "
               f"{'to move' if dry_run else 'moved'} to another run: {result.moved}, dropped: {result.dropped}")


def register(app: typer.Typer) -> None:
    """Add the `runs` command group."""
    app.add_typer(runs_app, name="runs")
