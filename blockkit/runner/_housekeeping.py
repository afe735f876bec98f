"""Run folder housekeeping: find runs (`latest`, prefixes), remove them, and garbage-collect old ones.

The cache index (`<runs dir>/cache-index.json`, see `blockkit.runner._cache`) maps a step's cache key to
`<run id>/steps/<step>/output`. Removing a run folder would leave such entries pointing at
nothing, so every removal also rewrites the index: an entry whose folder goes away is moved
to a surviving run that holds the same result (a run that reused it has a hard-linked copy
of the same files), and dropped when there is none. Nothing outside the runs dir is touched,
and symlinks in it are removed as links, never followed.

Whether a run is running is decided by its lock (`<run>/.lock`, see `blockkit.runner._lock.RunLock`),
never by run.json: a runner holds it from creating or resuming the run until its results are
staged out, and the kernel drops it when the runner dies. A run is removed while holding its lock.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockkit.contract.errors import WorkflowError
from blockkit.runner._cache import CACHE_INDEX, CacheIndex
from blockkit.runner._lock import RUN_LOCK, FileLock, RunLock, lock_held
from blockkit.runner._run_folder import RUN_FILE, RunFolder, find_run
from blockkit.runner._seal import remove_tree

LATEST = "latest"
_AGE = re.compile(r"(\d{1,9})\s*(s|m|h|d|w)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: A run folder's name (`RunFolder.create`): `<yyyymmdd>-<hhmmss>-<workflow>-<4 hex>`.
RUN_ID = re.compile(r"\d{8}-\d{6}-[\w-]{0,40}-[0-9a-f]{4}")
#: What gc removes of a killed runner's leftovers must be this old (s): one being made now is never raced.
LEFTOVER_AGE = 60.0
#: The shared files in the runs dir that runners replace through a temp file (`replace_atomic`),
#: with the lock each writer holds meanwhile (`CacheIndex.update`, `HashCache.save`).
_SHARED_FILES = {CACHE_INDEX: "cache-index.lock", "hash-cache.json": "hash-cache.lock"}


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

    @property
    def locked(self) -> bool:
        """True while a runner holds the run's lock: it is running, whatever run.json says (looked up now)."""
        return lock_held(self.path / RUN_LOCK)


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

    Running runs (their lock is held) are never selected: a runner may still write to them.
    """
    if keep is None and older_than is None:
        raise WorkflowError("say what to remove: --keep N (keep the N newest runs) or --older-than AGE")
    if keep is not None and keep < 0:
        raise WorkflowError("--keep must be 0 or more")
    chosen = []
    for index, run in enumerate(runs):  # newest first
        beyond_keep = keep is None or index >= keep
        old_enough = older_than is None or run.started < now - older_than
        if beyond_keep and old_enough and not run.locked:
            chosen.append(run)
    return chosen


@dataclass
class Removal:
    """What a removal did: runs removed, cache entries moved to another run or dropped, leftovers removed."""

    removed: list[str] = field(default_factory=list)
    moved: int = 0
    dropped: int = 0
    freed_bytes: int = 0
    unfinished: list[str] = field(default_factory=list)  # run folders without run.json
    temp_files: list[str] = field(default_factory=list)
    staged: list[str] = field(default_factory=list)  # staged-in inputs of sessions that are over


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


def remove_runs(root: Path, doomed: list[RunInfo], *, dry_run: bool = False, force: bool = False) -> Removal:
    """Remove run folders and keep the cache index consistent (entries moved or dropped).

    Each run's lock is taken first and held while its folder goes; a run whose lock a runner
    holds is refused (nothing removed), or with `force` removed all the same.
    """
    result = Removal()
    for run in doomed:
        if run.path.is_symlink() or run.path.resolve().parent != root.resolve():
            raise WorkflowError(f"{run.path} is not a run folder directly in {root}; nothing removed")
    locks = [] if dry_run else _lock_runs(doomed, force=force)
    try:
        _remove_locked(root, doomed, result, dry_run=dry_run)
    finally:
        for lock in locks:
            lock.release()
    return result


def _lock_runs(runs: list[RunInfo], *, force: bool) -> list[RunLock]:
    """The locks of these runs, taken without waiting; WorkflowError naming the holder of a held one."""
    locks: list[RunLock] = []
    try:
        for run in runs:
            lock = RunLock(run.path)
            try:
                lock.acquire()
            except (WorkflowError, OSError) as exc:
                if force:
                    continue
                why = (f"is being run by {lock.holder_text()}; wait for it to end or stop it"
                       if isinstance(exc, WorkflowError) else
                       f"cannot be locked ({exc.strerror or exc}); `runs rm --force` removes it anyway")
                raise WorkflowError(f"run {run.run_id} {why}; nothing removed") from None
            locks.append(lock)
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return locks


def _remove_locked(root: Path, doomed: list[RunInfo], result: Removal, *, dry_run: bool) -> None:
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
        return
    # The index first, under its lock (runners update it concurrently): a crash between the
    # two leaves runs without entries, never entries without runs.
    CacheIndex(root).update(repoint)
    for run in doomed:
        remove_tree(run.path)  # sealed outputs are read-only


def remove_leftovers(root: Path, result: Removal, *, now: float, dry_run: bool = False) -> None:
    """Remove what killed runners leave in the runs dir: run folders without run.json, temp files.

    Only what is older than `LEFTOVER_AGE`: a run-id-shaped folder without run.json whose lock
    is free (held while it goes), and a `.<name>.<16 hex>.tmp` of the cache index or the hash
    cache (removed under the lock its writers hold). Links are removed as links, never followed.
    """
    if not root.is_dir():
        return
    for path in _unfinished_runs(root, now):
        if dry_run and (lock_held(path / RUN_LOCK) or (path / RUN_LOCK).is_symlink()):
            continue  # what acquire below refuses
        lock = RunLock(path)
        try:
            if not dry_run:
                lock.acquire()
        except (WorkflowError, OSError):
            continue  # a runner is making it (or its lock is a planted link): leave it
        try:
            if not os.path.lexists(path / RUN_FILE):  # its runner may have written one since we looked
                result.freed_bytes += _tree_size(path)
                result.unfinished.append(path.name)
                if not dry_run:
                    remove_tree(path)
        finally:
            lock.release()
    _remove_staged_leftovers(root / "staged", result, now=now, dry_run=dry_run)
    for name, lock_name in _SHARED_FILES.items():
        guard: AbstractContextManager[object] = nullcontext() if dry_run else FileLock(root / lock_name)
        try:
            with guard:  # no writer is between creating its temp file and renaming it
                for path in _stale_files(root, re.escape(f".{name}.") + r"[0-9a-f]{16}\.tmp", now):
                    result.freed_bytes += path.lstat().st_size
                    result.temp_files.append(path.name)
                    if not dry_run:
                        path.unlink(missing_ok=True)
        except OSError:
            continue  # the lock file is a planted link (its writers fail too) or the file went meanwhile


def _remove_staged_leftovers(staged: Path, result: Removal, *, now: float, dry_run: bool) -> None:
    """Staged-in inputs (`<name>-<8 hex>/`) whose session is over (its `<folder>.lock` is free): a killed runner's."""
    if staged.is_symlink() or not staged.is_dir():
        return
    for path in _stale_files(staged, r"[\w.-]+-[0-9a-f]{8}", now, folders=True):
        try:
            fd = os.open(path.with_name(f"{path.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError:
            continue  # a planted link as its lock: leave it
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its session is still running
            result.freed_bytes += _tree_size(path)
            result.staged.append(f"staged/{path.name}")
            if not dry_run:
                remove_tree(path)
                path.with_name(f"{path.name}.lock").unlink(missing_ok=True)
        finally:
            os.close(fd)


def _unfinished_runs(root: Path, now: float) -> list[Path]:
    """Run-id-shaped folders (not links) without run.json, untouched for `LEFTOVER_AGE`: a runner died making them."""
    return [path for path in _stale_files(root, RUN_ID.pattern, now, folders=True)
            if not os.path.lexists(path / RUN_FILE)]


def _stale_files(root: Path, name: str, now: float, *, folders: bool = False) -> list[Path]:
    """Entries of root whose name matches the regex `name`, not changed for `LEFTOVER_AGE`: folders or non-folders."""
    found = []
    for path in sorted(root.iterdir()):
        try:
            st = path.lstat()
        except OSError:
            continue
        if re.fullmatch(name, path.name) and stat.S_ISDIR(st.st_mode) == folders and st.st_mtime < now - LEFTOVER_AGE:
            found.append(path)
    return found


def running_runs(root: Path, exclude: set[str] | None = None) -> list[RunInfo]:
    """Runs whose lock a runner holds (it may be writing the cache index)."""
    return [run for run in list_runs(root) if run.locked and run.run_id not in (exclude or set())]


def age_text(seconds: float) -> str:
    """A short human age: `42 s`, `5 min`, `3 h`, `2 d`."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"

