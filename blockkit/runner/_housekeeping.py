"""Run folder housekeeping: find runs (`latest`, prefixes), remove them, and garbage-collect old ones.

The cache index (`<runs dir>/cache-index.json`, see `blockkit.runner._cache`) maps a step's cache key to
`<run id>/steps/<step>/output`. Removing a run folder would leave such entries pointing at
nothing, so every removal also rewrites the index: an entry whose folder goes away is moved
to a surviving run that holds the same result (a run that reused it has a hard-linked copy
of the same files), and dropped when there is none. Nothing outside the runs dir is touched,
and symlinks in it are removed as links, never followed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockkit.contract.errors import WorkflowError
from blockkit.runner._cache import CacheIndex
from blockkit.runner._run_folder import RUN_FILE, RunFolder, find_run
from blockkit.runner._seal import remove_tree

LATEST = "latest"
_AGE = re.compile(r"(\d{1,9})\s*(s|m|h|d|w)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass
class RunInfo:
    """One run folder as housekeeping sees it (a damaged run.json still gives a RunInfo)."""

    path: Path
    status: str
    workflow: str
    started: float
    steps: dict[str, Any] = field(default_factory=dict)
    problem: str = ""

    @property
    def run_id(self) -> str:
        """The run's id (its folder name)."""
        return self.path.name


def read_run_info(path: Path) -> RunInfo:
    """What run.json says about a run folder; a damaged one is status `damaged` with the reason."""
    try:
        run = RunFolder(path).read_json(RUN_FILE)
    except WorkflowError as err:
        return RunInfo(path, "damaged", "?", _folder_time(path), problem=err.message)
    steps = run.get("steps") if isinstance(run.get("steps"), dict) else {}
    started = run.get("started")
    if isinstance(started, bool) or not isinstance(started, (int, float)):
        started = _folder_time(path)
    return RunInfo(path, str(run.get("status") or "?"), str(run.get("workflow") or "?"), float(started),
                   {str(k): v for k, v in steps.items() if isinstance(v, dict)})


def _folder_time(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def list_runs(root: Path) -> list[RunInfo]:
    """Every run folder under root (a folder with run.json, not a symlink), newest first."""
    if not root.is_dir():
        return []
    runs = [read_run_info(p) for p in root.iterdir()
            if p.is_dir() and not p.is_symlink() and (p / RUN_FILE).is_file()]
    return sorted(runs, key=lambda r: (r.started, r.run_id), reverse=True)


def resolve_run(root: Path, run_id: str) -> RunFolder:
    """The run folder for an id, a unique prefix of one, or `latest` (the most recently started run)."""
    if run_id == LATEST:
        runs = list_runs(root)
        if not runs:
            raise WorkflowError(f"no runs in {root}, so no latest run")
        return RunFolder(runs[0].path)
    if not run_id or "/" in run_id or run_id in (".", ".."):
        raise WorkflowError(f"{run_id!r} is not a run id; see `blockkit runs list`")
    return find_run(root, run_id)


def parse_age(text: str) -> float:
    """Seconds in an age like `30m`, `12h`, `7d`, `2w` or `1d12h`."""
    cleaned = text.strip().lower().replace(" ", "")
    parts = _AGE.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise WorkflowError(f"--older-than {text!r}: give an age like 30m, 12h, 7d or 2w")
    return float(sum(int(n) * _UNITS[u] for n, u in parts))


def select_for_gc(runs: list[RunInfo], *, keep: int | None, older_than: float | None, now: float) -> list[RunInfo]:
    """Which runs gc removes: beyond the newest `keep`, and/or started more than `older_than` s ago.

    Running runs are never selected (a runner may still write to them).
    """
    if keep is None and older_than is None:
        raise WorkflowError("say what to remove: --keep N (keep the N newest runs) or --older-than AGE")
    if keep is not None and keep < 0:
        raise WorkflowError("--keep must be 0 or more")
    chosen = []
    for index, run in enumerate(runs):  # newest first
        beyond_keep = keep is None or index >= keep
        old_enough = older_than is None or run.started < now - older_than
        if beyond_keep and old_enough and run.status != "running":
            chosen.append(run)
    return chosen


@dataclass
class Removal:
    """What a removal did: runs removed, cache entries moved to another run or dropped."""

    removed: list[str] = field(default_factory=list)
    moved: int = 0
    dropped: int = 0
    freed_bytes: int = 0


def _tree_size(path: Path) -> int:
    total = 0
    for item in path.rglob("*"):
        try:
            st = item.lstat()
        except OSError:
            continue
        if item.is_file() and not item.is_symlink() and st.st_nlink == 1:
            total += st.st_size  # hard-linked files stay on disk for the other links
    return total


def _replacement(key: str, survivors: list[RunInfo], root: Path) -> str | None:
    """A surviving run's folder holding the result of this cache key, relative to root.

    A step's key names its output folder; a feature's key (the datum cache of a scattered
    step) names the part folder `<run>/steps/<step>/parts/<name>` that holds its output.
    """
    for run in survivors:
        for name, step in run.steps.items():
            if step.get("cache_key") == key and step.get("status") in ("ok", "cached"):
                output = RunFolder(run.path).output_dir(name)
                if output.is_dir() and not output.is_symlink() and (output / "data.json").is_file():
                    return output.relative_to(root).as_posix()
            parts = step.get("parts")
            for part in parts if isinstance(parts, list) else []:
                if (isinstance(part, dict) and part.get("cache_key") == key
                        and part.get("status") in ("ran", "reused") and isinstance(part.get("name"), str)):
                    folder = run.path / "steps" / name / "parts" / part["name"]
                    if (not folder.is_symlink() and folder.parent.resolve() == (run.path / "steps" / name / "parts").resolve()
                            and (folder / "output").is_dir() and not (folder / "output").is_symlink()):
                        return folder.relative_to(root).as_posix()
    return None


def remove_runs(root: Path, doomed: list[RunInfo], *, dry_run: bool = False) -> Removal:
    """Remove run folders and keep the cache index consistent (entries moved or dropped)."""
    result = Removal()
    for run in doomed:
        if run.path.is_symlink() or run.path.resolve().parent != root.resolve():
            raise WorkflowError(f"{run.path} is not a run folder directly in {root}; nothing removed")
    names = {run.run_id for run in doomed}
    survivors = [run for run in list_runs(root) if run.run_id not in names]

    def repoint(entries: dict[str, str]) -> None:
        for key, rel in list(entries.items()):
            if rel.split("/", 1)[0] in names:
                new = _replacement(key, survivors, root)
                if new is None:
                    del entries[key]
                    result.dropped += 1
                else:
                    entries[key] = new
                    result.moved += 1

    for run in doomed:
        result.freed_bytes += _tree_size(run.path)
        result.removed.append(run.run_id)
    if dry_run:
        repoint(CacheIndex(root).checked_entries())
        return result
    # The index first, under its lock (runners update it concurrently): a crash between the
    # two leaves runs without entries, never entries without runs.
    CacheIndex(root).update(repoint)
    for run in doomed:
        remove_tree(run.path)  # sealed outputs are read-only
    return result


def running_runs(root: Path, exclude: set[str] | None = None) -> list[RunInfo]:
    """Runs whose run.json says `running` (a runner may be writing the cache index)."""
    return [run for run in list_runs(root) if run.status == "running" and run.run_id not in (exclude or set())]


def age_text(seconds: float) -> str:
    """A short human age: `42 s`, `5 min`, `3 h`, `2 d`."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"

