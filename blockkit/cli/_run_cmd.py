"""`blockkit run`: one block folder or a workflow file, on the process or docker engine."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from blockkit.cli._console import debugging, fail, unexpected
from blockkit.runner._run_folder import resume_command
from blockkit.contract.errors import BlockkitError, Interrupted, WorkflowError
from blockkit.contract._manifest import MANIFEST_FILE
from blockkit.contract._parameters import parse_parameters_text


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


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: stop like Ctrl-C (step killed, container removed, run interrupted)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _StopSignals:
    """While a run is going, SIGTERM and SIGHUP raise `Terminated` in the main thread (once)."""

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            return  # already stopping: let the cleanup finish
        self.received = signum
        raise Terminated(signum)

    def __enter__(self) -> "_StopSignals":
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:
                pass  # not the main thread (e.g. an embedding application): leave signals alone
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def name(self) -> str:
        """The signal's name."""
        return signal.Signals(self.received or signal.SIGINT).name


class Progress:
    """A line per step event and the step logs prefixed with the step name (rich, to stderr).

    Nothing that comes from outside (step names, paths, URIs, ids, block output) is ever
    read as rich markup: values are escaped, messages and log lines printed with markup off.
    """

    def __init__(self, json_mode: bool, quiet: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.json_mode = json_mode
        self.quiet = quiet
        self.started: dict[str, float] = {}

    def event(self, kind: str, step: str, info: dict[str, Any]) -> None:
        """Show a step's state change (with --json: one JSON object per line on stderr, naming the step)."""
        if self.json_mode:
            line = json.dumps({"event": kind, "step": step, "time": round(time.time(), 3), **info}, default=str)
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
            return
        features = info.get("features")
        feats = f", {features} feature(s) out" if features is not None else ""
        from rich.markup import escape

        step = escape(step)
        if kind == "started":
            self.started[step] = time.time()
            self.console.print(f"[bold cyan]▶ {step}[/] running")
        elif kind == "done":
            if "features_reused" in info:  # a scattered step: how much the datum cache saved
                kept = f", {info['features_kept']} finished before the resume" if info.get("features_kept") else ""
                feats += f" ({info.get('features_ran')} ran{kept}, {info['features_reused']} reused)"
            self.console.print(f"[bold green]✔ {step}[/] done in {info.get('seconds', 0):.1f} s{feats}")
        elif kind == "cached":
            self.console.print(f"[bold green]✔ {step}[/] unchanged: reused {escape(str(info.get('source')))}{feats}")
        elif kind == "skipped":
            self.console.print(f"[bold green]✔ {step}[/] {escape(str(info.get('reason')))}{feats}")
        elif kind == "failed":
            self.console.print(f"[bold red]✘ {step}[/] exit {info.get('exit_code')} ({escape(str(info.get('exit_name')))})")
        elif kind == "blocked":
            self.console.print(f"[bold yellow]■ {step}[/] {escape(str(info.get('detail')))}")
        elif kind == "interrupted":
            self.console.print(f"[bold yellow]■ {step}[/] {escape(str(info.get('detail')))}")
        elif kind == "warning":
            self.console.out(f"! {step} warning: {info.get('message')}", highlight=False)

    def message(self, text: str) -> None:
        """Show a runner message (paths, URIs, ids: printed verbatim); with --json, warnings as JSON events."""
        if not self.json_mode:
            self.console.print(text, markup=False, highlight=False)
        elif text.startswith("warning: "):
            line = json.dumps({"event": "warning", "step": None, "time": round(time.time(), 3),
                               "message": text[len("warning: "):]})
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def log(self, step: str, line: str) -> None:
        """Show one log line of a step (already cleaned of control sequences by the engine)."""
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
        jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="at most N steps at once (default: as many as the CPUs and memory allow; 1: one after another)"),
        fail_fast: bool = typer.Option(False, "--fail-fast", help="when a step fails, stop the steps still running"),
        keep_going: bool = typer.Option(False, "--keep-going", "-k", help="when a step or feature fails, finish every other one that does not depend on it"),
        strict_cpu: Optional[bool] = typer.Option(None, "--strict-cpu/--no-strict-cpu", show_default=False, help="cap each step at its machine type's CPUs, as UP42 does (docker); default: they are its share when CPUs are busy, and --resume keeps what the run had"),
    ) -> None:
        """Run a workflow (or one block) and write a run folder with outputs, logs and provenance."""
        from blockkit.contract.errors import RunFailed, RunInterrupted
        from blockkit.report import write_report_after_run
        from blockkit.runner._session import RunRequest, run_request

        progress = Progress(json_out, quiet)
        stop = _StopSignals()
        try:
            if target is None and resume is None:
                raise WorkflowError("give a workflow file or a block folder (or --resume RUN_ID)")
            from blockkit.runner._plan import parse_cpus, parse_memory

            request = RunRequest(
                max_cpus=parse_cpus(max_cpus), max_memory_mb=parse_memory(max_memory),
                jobs=jobs, fail_fast=fail_fast, keep_going=keep_going, strict_cpu=strict_cpu,  # None: a resume keeps the run's
                target=target, engine=engine, input=input_, output=output,
                params=_params_option(params), runs_dir=runs_dir, use_cache=not no_cache, resume=resume,
                on_event=progress.event, on_log_line=progress.log,
                on_message=progress.message,
                console=None if json_out else progress.console,
            )
            with stop:
                summary = run_request(request)
        except RunFailed as err:
            report, report_problem = write_report_after_run(err.run_dir)
            resume = resume_command(err.run_dir)
            fail(err, as_json=json_out,
                 hints=[f"run folder: {err.run_dir} (resume with: {resume})",
                        f"report: {report}" if report else report_problem],
                 fields={"run_id": err.run_dir.name, "run_dir": str(err.run_dir), "step": err.step,
                         "step_exit": err.step_exit, "resume": resume, "report": str(report) if report else None})
        except RunInterrupted as err:
            # The exit status is 128 + the signal, as shells report it.
            resume = resume_command(err.run_dir)
            fail(RunInterrupted(err.run_dir, signum=stop.received, resume=resume), as_json=json_out,
                 fields={"run_id": err.run_dir.name, "run_dir": str(err.run_dir), "resume": resume})
        except KeyboardInterrupt:
            # Stopped before the run folder existed (planning, building, staging in).
            fail(Interrupted(f"stopped by {stop.name} before any step ran", signum=stop.received), as_json=json_out)
        except BlockkitError as err:
            fail(err, as_json=json_out)
        except OSError as exc:  # the runner's own files: still one line, and the JSON object with --json
            if debugging():
                raise
            fail(unexpected(exc), as_json=json_out)
        report, report_problem = write_report_after_run(Path(summary["run_dir"]))
        summary["report"] = str(report) if report else None
        if json_out:
            typer.echo(json.dumps(summary, indent=2, default=str))
        else:
            from rich.markup import escape

            progress.console.print(f"[bold]run {escape(summary['run_id'])}[/] ok → {escape(summary['run_dir'])}")
            typer.echo(f"report: {report}" if report else report_problem, err=True)
            for where in summary.get("outputs", []):
                progress.message(f"results: {where}")
        sys.stdout.flush()


def looks_like_block(path: Path) -> bool:
    """True when the path is a block folder."""
    return path.is_dir() and (path / MANIFEST_FILE).is_file()
