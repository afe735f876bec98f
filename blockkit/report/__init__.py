"""Run reports: one self-contained `report.html` per run folder (graph, timeline, maps, logs).

Exports `write_report(run_dir, output=None) -> Path` and `REPORT_FILE`. Nothing heavy is
imported: the report reads JSON and PNG bytes only.
"""

from __future__ import annotations

from pathlib import Path

from blockkit.contract._datajson import write_atomic

REPORT_FILE = "report.html"

__all__ = ["REPORT_FILE", "write_report", "write_report_after_run"]


def write_report(run_dir: Path, output: Path | None = None) -> Path:
    """Write the HTML report of a run folder (default `<run_dir>/report.html`) and return its path."""
    from blockkit.report._model import read_report
    from blockkit.report._page import render_page

    run_dir = Path(run_dir).resolve()
    target = Path(output).resolve() if output is not None else run_dir / REPORT_FILE
    data = read_report(run_dir, report_dir=target.parent)
    write_atomic(target, render_page(data.to_dict()))
    return target


def write_report_after_run(run_dir: Path) -> tuple[Path | None, str]:
    """Write a finished run's report; (path, "") or (None, why) - a report problem never fails a run."""
    from blockkit.contract.errors import BlockkitError

    try:
        return write_report(run_dir), ""
    except (BlockkitError, OSError, ValueError, RecursionError) as exc:
        return None, f"report not written: {getattr(exc, 'message', None) or exc}"
