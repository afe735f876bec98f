"""Cache keys and the cache index: which earlier result a step (or one feature of a scattered step) may reuse.

Pure rules, no block is run here: a key is the sha256 of what determines a result
(`step_identity` + the hashes of the inputs); the index (`cache-index.json` in the runs
folder, shared by concurrent runners under a lock) maps a key to the folder, relative to
the runs folder, that holds that result; `producer_record`/`part_producer` read back what
the producing run recorded for it (its hashes), which a result must still match before any
reuse (`blockkit.runner._seal.verify_tree`). See docs/runner.md, "Cache and resume" and
"The datum cache".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from blockkit.contract._datajson import DATA_JSON
from blockkit.contract.errors import WorkflowError
from blockkit.runner._hashing import HashCache, digest_of
from blockkit.runner._lock import FileLock, replace_atomic
from blockkit.runner._run_folder import RUN_FILE
from blockkit.runner._seal import verify_tree

CACHE_INDEX = "cache-index.json"


def step_identity(*, block: str | None, params: Mapping[str, Any], mode: str | None, blockkit_version: str,
                  engine: str, image_id: str | None, scatter: str | None) -> dict[str, Any]:
    """What makes a step's result besides its inputs.

    Args:
        block: the block's source tree hash (process) or image id (docker).
        params: the resolved parameters.
        mode: the job mode (`DEFAULT`/`DRY_RUN`).
        blockkit_version: the runner's version.
        engine: the engine's name: results are never shared between engines, which run a
            block in different environments (host Python vs the image).
        image_id: the image id (docker), or None.
        scatter: `features` for a scattered step; other steps do not carry the field, so
            their keys stay what they were before scatter existed.
    """
    return {
        "block": block,
        "params": dict(params),
        "mode": mode,
        "blockkit": blockkit_version,
        "engine": engine,
        "image_id": image_id,
        **({"scatter": scatter} if scatter else {}),
    }


def step_key(identity: Mapping[str, Any], inputs: Mapping[str, str], propagate: bool) -> str:
    """A step's cache key: its identity, the sha256 of every input file, and its propagation."""
    return digest_of({**identity, "inputs": dict(inputs), "propagate": propagate})


def part_key(identity: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    """One feature's key in a scattered step: the step's identity and its one-feature input's hashes.

    Neither the feature's position nor its folder name is in it, so adding, removing or
    reordering features changes no other feature's key. Propagation is done on the merged
    output, not per feature, so it is not in it either.
    """
    return digest_of({**identity, "inputs": dict(inputs), "datum": "feature"})


class CacheIndex:
    """Maps a step's cache key to the run folder output that has that result.

    Many runners share `cache-index.json`: every change is a read-merge-write under a lock
    (`cache-index.lock`) through a unique temp file, so concurrent runs keep every entry.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / CACHE_INDEX

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}

    @property
    def entries(self) -> dict[str, str]:
        """The current entries (cache key -> output folder relative to the runs folder)."""
        return self._read()

    def checked_entries(self) -> dict[str, str]:
        """The entries, or a WorkflowError when the index exists but is damaged (housekeeping).

        `entries` and `lookup` treat a damaged index as empty (a run then just does not
        reuse); removing runs must not rewrite a damaged index as if it were empty.
        """
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise WorkflowError(f"{self.path} is damaged ({exc}); remove it to start an empty cache") from None
        if not isinstance(data, dict):
            raise WorkflowError(f"{self.path} is not a JSON object; remove it to start an empty cache")
        return {str(k): v for k, v in data.items() if isinstance(v, str)}

    def lookup(self, key: str) -> str | None:
        """The output folder (relative to the runs folder) recorded for this key, or None."""
        return self._read().get(key)

    def update(self, change: Callable[[dict[str, str]], None]) -> None:
        """Change the entries under the index lock (read, change in place, write)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(self.root / "cache-index.lock"):
            entries = self._read()
            change(entries)
            replace_atomic(self.path, json.dumps(entries, indent=1))

    def store(self, key: str, output_dir: Path) -> None:
        """Remember that this output folder is the result for this key."""
        self.store_many([(key, output_dir)])

    def store_many(self, results: Sequence[tuple[str, Path]]) -> None:
        """Remember several (key, output folder) results in one read-merge-write of the index."""
        rels = [(key, output_dir.relative_to(self.root).as_posix()) for key, output_dir in results]
        self.update(lambda entries: entries.update(rels))

    def evict(self, key: str, rel: str) -> None:
        """Forget this key's entry if it still names `rel`."""
        def drop(entries: dict[str, str]) -> None:
            if entries.get(key) == rel:
                del entries[key]

        self.update(drop)


def producer_record(root: Path, rel: str, key: str) -> dict[str, Any] | None:
    """The run.json record of the step whose output `rel` (`<run>/steps/<step>/output`) has this key.

    None when the run or step is gone, made another key, did not finish, or recorded no
    output hashes: such an entry must not be reused.
    """
    parts = rel.split("/")
    if len(parts) != 4 or parts[1] != "steps" or parts[3] != "output" or ".." in parts:
        return None
    try:
        run = json.loads((root / parts[0] / RUN_FILE).read_text())
        rec = run["steps"][parts[2]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(rec, dict) or rec.get("cache_key") != key or rec.get("status") not in ("ok", "cached"):
        return None
    if not isinstance(rec.get("outputs"), dict) or DATA_JSON not in rec["outputs"]:
        return None
    return rec


def part_producer(root: Path, rel: str, key: str, runs: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The run.json entry of the feature a cache entry names (`<run>/steps/<step>/parts/<name>`).

    None if gone, not that key, not finished, or without recorded hashes. `runs` keeps each
    run.json read (run folder name -> its document): a scattered step looks up every
    feature, mostly in the same few runs, and reads each of their run.json once; a feature
    not in the kept document is looked up in a fresh read (that run may have written since).
    """
    segments = rel.split("/")
    if len(segments) != 5 or segments[1] != "steps" or segments[3] != "parts" or ".." in segments:
        return None
    memo = runs.get(segments[0]) if runs is not None else None
    found = _finished_part(memo, segments[2], segments[4], key) if memo is not None else None
    if found is not None:
        return found
    # Not in the document read earlier (or none read yet): that run may have written since.
    try:
        run = json.loads((root / segments[0] / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if runs is not None:
        runs[segments[0]] = run
    return _finished_part(run, segments[2], segments[4], key)


def _finished_part(run: Any, step: str, name: str, key: str) -> dict[str, Any] | None:
    """The finished feature `name` of `step` with this key in a run.json document, or None."""
    try:
        parts = run["steps"][step]["parts"]
    except (KeyError, TypeError):
        return None
    if not isinstance(parts, list):
        return None
    for part in parts:
        if (isinstance(part, dict) and part.get("name") == name and part.get("cache_key") == key
                and part.get("status") in ("ran", "reused") and isinstance(part.get("outputs"), dict)
                and isinstance(part.get("quicklooks"), dict)):
            return part
    return None


def verify_part(part_dir: Path, part: Mapping[str, Any], hashes: HashCache) -> str | None:
    """Why a sealed feature folder no longer matches its recorded hashes (output and quicklooks), or None."""
    for sub, recorded in (("output", part.get("outputs")), ("quicklooks", part.get("quicklooks"))):
        if not isinstance(recorded, dict):
            return f"no recorded hashes for its {sub}"
        problem = verify_tree(part_dir / sub, recorded, hashes)
        if problem is not None:
            return f"{sub}: {problem}"
    return None
