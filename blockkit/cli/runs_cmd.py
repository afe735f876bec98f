"""`blockkit runs list|show|logs`: look at run folders."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from blockkit.contract.errors import BlockkitError

runs_app = typer.Typer(help="List and inspect runs.", no_args_is_help=True)


def _root(runs_dir: Path | None) -> Path:
    from blockkit.runner.run import default_runs_dir

    return (runs_dir or default_runs_dir()).resolve()


@runs_app.command("list")
def list_runs(runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
              as_json: bool = typer.Option(False, "--json", help="one JSON object per run, for machines")) -> None:
    """List runs, newest first: id, workflow, status, engine, steps done, start time."""
    from blockkit.runner.run import RUN_FILE

    root = _root(runs_dir)
    paths = sorted(root.glob(f"*/{RUN_FILE}"), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []
    rows = [_summary(path) for path in paths]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no runs in {root}")
        return
    # Plain aligned columns (like `docker ps`): the id is what `runs show|logs` and
    # `run --resume` take, so nothing is ever cut to fit a terminal.
    header = {"run_id": "RUN ID", "workflow": "WORKFLOW", "status": "STATUS", "engine": "ENGINE",
              "steps": "STEPS", "started": "STARTED"}
    table = [header] + [{k: str(row.get(k, "")) for k in header} for row in rows]
    widths = {k: max(len(r[k]) for r in table) for k in header}
    for r in table:
        typer.echo("  ".join(r[k].ljust(widths[k]) for k in header).rstrip())


def _summary(path: Path) -> dict[str, str]:
    """One run's line; a broken run.json is reported, not fatal."""
    from blockkit.runner.run import RunFolder

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
    from blockkit.cli.run_cmd import _resume_command
    from blockkit.runner.lock import runner_gone

    status = str(run["status"])
    if status == "running" and runner_gone(run_dir, run.get("runner")):
        return f"interrupted (runner gone; resume with: {_resume_command(run_dir)})"
    return status


@runs_app.command("show")
def show_run(run_id: str, runs_dir: Optional[Path] = typer.Option(None, "--runs-dir"),
             provenance: bool = typer.Option(False, "--provenance", help="print provenance.json")) -> None:
    """Show a run's steps (status, exit code, features, time) or its provenance."""
    from blockkit.cli.main import fail
    from blockkit.runner.run import PROVENANCE_FILE, RUN_FILE, find_run

    try:
        folder = find_run(_root(runs_dir), run_id)
    except BlockkitError as err:
        fail(err)
    if provenance:
        typer.echo((folder.path / PROVENANCE_FILE).read_text())
        return
    run = folder.read_json(RUN_FILE)
    typer.echo(f"run {run['run_id']}  workflow {run['workflow']}  status {_status(folder.path, run)}  engine {run['engine']}")
    typer.echo(f"folder {folder.path}")
    for name, step in run["steps"].items():
        seconds = f"{step['ended'] - step['started']:.1f} s" if step.get("ended") and step.get("started") else "-"
        typer.echo(f"  {name:<16} {step['status']:<8} exit {step['exit_code']} ({step['exit_name']})  "
                   f"{step['features_out']} feature(s)  {seconds}" + (f"  {step['detail']}" if step.get("detail") else ""))


@runs_app.command("logs")
def run_logs(run_id: str, step: Optional[str] = typer.Argument(None),
             runs_dir: Optional[Path] = typer.Option(None, "--runs-dir")) -> None:
    """Print the logs of a run (all steps, or one)."""
    from blockkit.cli.main import fail
    from blockkit.runner.run import find_run

    try:
        folder = find_run(_root(runs_dir), run_id)
    except BlockkitError as err:
        fail(err)
    logs = sorted((folder.path / "logs").glob("*.log"))
    if step:
        logs = [p for p in logs if p.stem == step]
        if not logs:
            typer.echo(f"[WRONG_INPUT_ERROR] run {folder.run_id} has no log for step {step!r}", err=True)
            raise typer.Exit(4)
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            typer.echo(f"{path.stem} | {line}")


def register(app: typer.Typer) -> None:
    """Add the `runs` command group."""
    app.add_typer(runs_app, name="runs")
