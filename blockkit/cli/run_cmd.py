"""`blockkit run`: one block folder or a workflow file, on the process or docker engine."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from blockkit.contract.errors import BlockkitError, WorkflowError
from blockkit.contract.manifest import MANIFEST_FILE
from blockkit.contract.parameters import parse_parameters_text


def _params_option(value: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            value = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            from blockkit.contract.errors import InputParametersError

            raise InputParametersError(f"cannot read parameters file {path}: {exc}") from None
    return parse_parameters_text(value, "--params")


class Progress:
    """A line per step event and the step logs prefixed with the step name (rich, to stderr)."""

    def __init__(self, json_mode: bool, quiet: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.json_mode = json_mode
        self.quiet = quiet
        self.started: dict[str, float] = {}

    def event(self, kind: str, step: str, info: dict[str, Any]) -> None:
        """Show a step's state change."""
        if self.json_mode:
            return
        features = info.get("features")
        feats = f", {features} feature(s) out" if features is not None else ""
        if kind == "started":
            self.started[step] = time.time()
            self.console.print(f"[bold cyan]▶ {step}[/] running")
        elif kind == "done":
            self.console.print(f"[bold green]✔ {step}[/] done in {info.get('seconds', 0):.1f} s{feats}")
        elif kind == "cached":
            self.console.print(f"[bold green]✔ {step}[/] unchanged: reused {info.get('source')}{feats}")
        elif kind == "skipped":
            self.console.print(f"[bold green]✔ {step}[/] {info.get('reason')}{feats}")
        elif kind == "failed":
            self.console.print(f"[bold red]✘ {step}[/] exit {info.get('exit_code')} ({info.get('exit_name')})")
        elif kind == "warning":
            self.console.out(f"! {step} warning: {info.get('message')}", highlight=False)

    def log(self, step: str, line: str) -> None:
        """Show one log line of a step."""
        if not self.json_mode and not self.quiet:
            self.console.out(f"{step} | {line}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `run` command."""

    @app.command()
    def run(
        target: Optional[Path] = typer.Argument(None, help="workflow.yaml or a block folder"),
        engine: str = typer.Option("auto", "--engine", "-e", help="auto | process | docker"),
        input_: Optional[str] = typer.Option(None, "--input", "-i", help="input folder or URI (overrides the workflow's)"),
        output: Optional[str] = typer.Option(None, "--output", "-o", help="copy results here (folder or URI)"),
        params: Optional[str] = typer.Option(None, "--params", "-p", help="block parameters: JSON or @file (block folders only)"),
        runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="where run folders go (default .blockkit/runs)"),
        no_cache: bool = typer.Option(False, "--no-cache", help="run every step even if unchanged"),
        resume: Optional[str] = typer.Option(None, "--resume", help="continue a failed run from its failed step"),
        json_out: bool = typer.Option(False, "--json", help="print a JSON summary on stdout instead of progress"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="do not stream step logs"),
        max_cpus: Optional[str] = typer.Option(None, "--max-cpus", help="cap every step's CPUs (default: the host's)"),
        max_memory: Optional[str] = typer.Option(None, "--max-memory", help="cap every step's memory, e.g. 4g (default: the host's)"),
    ) -> None:
        """Run a workflow (or one block) and write a run folder with outputs, logs and provenance."""
        from blockkit.cli.main import fail
        from blockkit.contract.errors import ExitCode
        from blockkit.report import write_report_after_run
        from blockkit.runner.run import RunFailed, RunInterrupted
        from blockkit.runner.session import RunRequest, run_request

        progress = Progress(json_out, quiet)
        try:
            if target is None and resume is None:
                raise WorkflowError("give a workflow file or a block folder (or --resume RUN_ID)")
            from blockkit.runner.plan import parse_cpus, parse_memory

            request = RunRequest(
                max_cpus=parse_cpus(max_cpus), max_memory_mb=parse_memory(max_memory),
                target=target, engine=engine, input=input_, output=output,
                params=_params_option(params), runs_dir=runs_dir, use_cache=not no_cache, resume=resume,
                on_event=progress.event, on_log_line=progress.log,
                on_message=lambda text: None if json_out else progress.console.print(text),
                console=None if json_out else progress.console,
            )
            summary = run_request(request)
        except RunFailed as err:
            report, report_problem = write_report_after_run(err.run_dir)
            if json_out:
                typer.echo(json.dumps({"status": "failed", "run_id": err.run_dir.name, "run_dir": str(err.run_dir),
                                       "step": err.step, "exit_code": err.step_exit, "message": err.message,
                                       "resume": _resume_command(err.run_dir),
                                       "report": str(report) if report else None}))
            typer.echo(f"[{ExitCode.describe(err.step_exit)}] {err.message}", err=True)
            typer.echo(f"run folder: {err.run_dir} (resume with: {_resume_command(err.run_dir)})", err=True)
            typer.echo(f"report: {report}" if report else report_problem, err=True)
            raise typer.Exit(err.step_exit if 0 < err.step_exit < 256 else 1)
        except RunInterrupted as err:
            if json_out:
                typer.echo(json.dumps({"status": "interrupted", "run_id": err.run_dir.name, "run_dir": str(err.run_dir),
                                       "resume": _resume_command(err.run_dir)}))
            typer.echo(f"[INTERRUPTED] {err.message}; resume with: {_resume_command(err.run_dir)}", err=True)
            raise typer.Exit(130)  # 128 + SIGINT, as shells report it
        except BlockkitError as err:
            fail(err)
        report, report_problem = write_report_after_run(Path(summary["run_dir"]))
        summary["report"] = str(report) if report else None
        if json_out:
            typer.echo(json.dumps(summary, indent=2, default=str))
        else:
            progress.console.print(f"[bold]run {summary['run_id']}[/] ok → {summary['run_dir']}")
            typer.echo(f"report: {report}" if report else report_problem, err=True)
            for where in summary.get("outputs", []):
                progress.console.print(f"results: {where}")
        sys.stdout.flush()


def _resume_command(run_dir: Path) -> str:
    """The command that resumes this run (with --runs-dir when the run is not in the default place)."""
    import shlex

    from blockkit.runner.run import default_runs_dir

    command = f"blockkit run --resume {run_dir.name}"
    if run_dir.parent.resolve() != default_runs_dir().resolve():
        command += f" --runs-dir {shlex.quote(str(run_dir.parent))}"
    return command


def looks_like_block(path: Path) -> bool:
    """True when the path is a block folder."""
    return path.is_dir() and (path / MANIFEST_FILE).is_file()
