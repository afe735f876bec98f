"""Workflow-level storage: stage the `input:` URI in, the results out, and hand steps their keys."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from blockkit.runner._plan import Plan, PlannedStep
from blockkit.runner._workflow import Workflow

if TYPE_CHECKING:
    from blockkit.runner._run import WorkflowRun
    from blockkit.storage import Keystore, Redactor


def _keystore() -> "Keystore":
    from blockkit.storage import Keystore

    return Keystore.from_env()


def stage_in_input(workflow: Workflow, runs_dir: Path, say: Callable[[str], None],
                   cleanup: contextlib.ExitStack) -> Path:
    """Fetch the workflow's input URI into `<runs>/staged/<unique>/` and return that folder.

    The folder is the session's (a resume stages the input in again): `cleanup` removes it
    when the session ends, however it ends. Its lock file `<unique>.lock` is held until then,
    so `runs gc` can tell the folder a killed runner left (lock free) from one in use.
    """
    from blockkit.runner._lock import FileLock
    from blockkit.runner._run_folder import safe_name
    from blockkit.runner._seal import remove_tree
    from blockkit.storage import public_url, stage_in

    assert workflow.input is not None
    key = workflow.keys.get("input")
    target = runs_dir / "staged" / f"{safe_name(workflow.name)}-{secrets.token_hex(4)}"  # never `../`
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.with_name(f"{target.name}.lock")
    cleanup.callback(lock.unlink, missing_ok=True)
    cleanup.enter_context(FileLock(lock))
    cleanup.callback(remove_tree, target)  # first out: the folder goes while the lock is held
    # the URL without user:password@ and without its query (a presigned URL's signature)
    say(f"staging in {public_url(workflow.input)}" + (f" with key {key!r}" if key else ""))
    fc = stage_in(workflow.input, target, keystore=_keystore() if key else None, key=key)
    seal_staged(target)
    say(f"staged in {len(fc)} feature(s) to {target}")
    return target


#: The name a delivery's partial folder starts with inside an existing output folder (beside a
#: new one: `.<name>` first): never a result, so an output folder holding only such is empty.
PARTIAL = ".blockkit-partial-"


def deliver_local(run: "WorkflowRun", finals: list[str], target: Path) -> list[str]:
    """Hard-link the final outputs into a partial folder, then move it into place: `target` is never partial.

    A new target: the partial folder is made beside it (`.<name>.blockkit-partial-<hex>`) and
    renamed onto it in one step. An existing empty folder (a mount point, say, which no rename
    replaces): the partial folder is made inside it (`.blockkit-partial-<hex>`) and its entries
    are renamed up, data.json (or each step's folder) whole and last, while an exclusive
    `flock` on the folder keeps a second run out. Every name below the folder the target is
    in goes through directory descriptors, never a path a link could redirect. A partial
    folder is `flock`ed by the run making it: one whose lock is free is a killed run's and goes.
    """
    import errno
    import fcntl

    from blockkit.contract._datajson import DATA_JSON
    from blockkit.contract.errors import WorkflowError
    from blockkit.runner._seal import remove_tree
    from blockkit.runtime._propagation import link_tree

    target.parent.mkdir(parents=True, exist_ok=True)
    into = target.is_dir() and not target.is_symlink()
    home = target if into else target.parent
    prefix = PARTIAL if into else f".{target.name}{PARTIAL}"
    home_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if into:
            try:
                fcntl.flock(home_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WorkflowError(f"output folder {target} is being filled by another run; choose an empty or "
                                    "new folder") from None
        _remove_dead_partials(home, home_fd, prefix)
        name = f"{prefix}{secrets.token_hex(8)}"
        os.mkdir(name, 0o755, dir_fd=home_fd)
        part_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=home_fd)
        try:
            fcntl.flock(part_fd, fcntl.LOCK_EX)
            if into and any(not entry.startswith(prefix) for entry in os.listdir(home_fd)):
                raise WorkflowError(f"output folder {target} is not empty (filled while this run ran); choose an "
                                    "empty or new folder")
            places = output_targets(finals, str(home / name))
            for step, where in places:
                link_tree(run.folder.output_dir(step), Path(where), base=home)  # O_NOFOLLOW below home
            try:
                if into:
                    for entry in sorted(os.listdir(part_fd), key=lambda entry: entry == DATA_JSON):
                        os.rename(entry, entry, src_dir_fd=part_fd, dst_dir_fd=home_fd)
                else:
                    os.rename(name, target.name, src_dir_fd=home_fd, dst_dir_fd=home_fd)  # never onto a full folder
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
                raise WorkflowError(f"output folder {target} is not empty (filled while this run ran) or not a "
                                    "folder; choose an empty or new folder") from None
        finally:
            remove_tree(home / name)  # never through a link planted in its place (see remove_tree)
            os.close(part_fd)
    finally:
        os.close(home_fd)
    return [str(target / Path(where).relative_to(home / name)) for _, where in places]


def _remove_dead_partials(home: Path, home_fd: int, prefix: str) -> None:
    """Remove the partial folders in `home` whose run died (their flock is free)."""
    import fcntl

    from blockkit.runner._seal import remove_tree

    for entry in os.listdir(home_fd):
        if not entry.startswith(prefix):
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=home_fd)
        except OSError:
            continue  # not a folder (or gone): not ours to judge
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live run's
        finally:
            os.close(fd)
        remove_tree(home / entry)


def seal_staged(target: Path) -> None:
    """Make a staged-in folder read-only like a step output (links and special files refused).

    Files the stage-in hard-linked from a local source keep their mode: their inode is the
    user's file, which the runner never changes.
    """
    from blockkit.contract.errors import WrongInputError
    from blockkit.runner._hashing import HashCache
    from blockkit.runner._seal import SealError, seal_tree

    try:
        seal_tree(target, HashCache(None), what="staged-in input", hash_files=False).lock()
    except SealError as err:
        raise WrongInputError(f"{err.message} ({target})") from None


def output_targets(finals: list[str], target: str) -> list[tuple[str, str]]:
    """(step, place) pairs a run's outputs go to: the target itself, or one prefix (or sub-folder) per final step.

    The one naming rule for stage-out URIs and local output folders alike.
    """
    if len(finals) == 1:
        return [(finals[0], target)]
    return [(name, f"{target.rstrip('/')}/{name}/") for name in finals]


def check_output_targets(finals: list[str], target: str, workflow: Workflow) -> None:
    """Refuse before any step runs when a stage-out target already holds files (stage-out never overwrites)."""
    from blockkit.storage import check_target

    key = workflow.keys.get("output")
    keystore = _keystore() if key else None
    for _name, uri in output_targets(finals, target):
        check_target(uri, keystore=keystore, key=key)


def stage_out_outputs(run: "WorkflowRun", finals: list[str], target: str, workflow: Workflow,
                      say: Callable[[str], None]) -> list[str]:
    """Upload each final step's output to the target URI (one prefix per step when several).

    Args:
        run: the finished run (its folder holds the steps' outputs).
        finals: the steps whose outputs are the workflow's results.
        target: the workflow's output URI.
        workflow: the workflow (its `keys.output` names the keystore key).
        say: where one line per staged-out step goes.

    Returns the catalog URI of each upload.
    """
    from blockkit.storage import stage_out

    key = workflow.keys.get("output")
    keystore = _keystore() if key else None
    results = []
    for name, uri in output_targets(finals, target):
        catalog = stage_out(run.folder.output_dir(name), uri, keystore=keystore, key=key)
        say(f"staged out {name!r}: {catalog}")
        results.append(catalog)
    return results


def _env_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", key).upper()


class StepKeys:
    """Gives each step only the keystore keys it names, and redacts their secrets everywhere."""

    def __init__(self, plan: Plan) -> None:
        from blockkit.storage import Redactor

        self.redactor: Redactor = Redactor([])
        self._env: dict[str, dict[str, str]] = {}
        names = {k for step in plan.steps for k in step.definition.keys} | set(plan.workflow.keys.values())
        if not names:
            return
        keystore = _keystore()
        loaded = {name: keystore.get(name) for name in sorted(names)}
        for key in loaded.values():
            for value in key.secrets():
                self.redactor.add(value)
        for step in plan.steps:
            env: dict[str, str] = {}
            for name in step.definition.keys:
                key, prefix = loaded[name], f"BLOCKKIT_KEY_{_env_name(name)}_"
                config = key.config
                env[f"{prefix}TYPE"] = key.type
                fields = {}
                for field_name in ("endpoint", "region", "bucket", "access_key", "secret_key", "username", "password"):
                    value = getattr(config, field_name, None)
                    if value:
                        env[prefix + field_name.upper()] = str(value)
                        fields[field_name] = str(value)
                # The whole key as JSON too, the form the CWL export passes (`BLOCKKIT_KEY_<NAME>`).
                env[prefix.rstrip("_")] = json.dumps({"type": key.type, **fields})
            self._env[step.name] = env

    def env_for(self, step: PlannedStep) -> dict[str, str]:
        """The environment variables carrying this step's keys (and no other step's)."""
        return dict(self._env.get(step.name, {}))

    def redact(self, text: str) -> str:
        """Text with every secret value replaced."""
        return self.redactor.redact(text)
