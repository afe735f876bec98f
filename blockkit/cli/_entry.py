"""The `blockkit` console script: the command line, or one line saying how to install it.

Block images and block environments hold the SDK only (`pip install blockkit-eo`); the command
line, runner, storage and gateway need `blockkit-eo[runner]`. Without them, `blockkit` says so
in one line instead of a traceback.
"""

from __future__ import annotations

import re
import sys

# Both are stdlib-only (the runner package imports its modules lazily): they load without the extra.
from blockkit.runner._image_names import DIST_NAME  # the distribution whose metadata names the extra
from blockkit.runner._image_names import canonical_name as _canonical

_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"""\bextra\s*==\s*["']([^"']+)["']""")


def main() -> None:
    """Run the command line (`blockkit.cli.main`)."""
    try:
        from blockkit.cli.main import main as command_line
    except ModuleNotFoundError as exc:
        if not needs_runner(exc.name or ""):
            raise
        from blockkit.contract.errors import WorkflowError

        err = WorkflowError(f"the blockkit command line needs the runner ({exc.name} is not installed): "
                            "pip install 'blockkit-eo[runner]'")
        print(err.headline(), file=sys.stderr)
        sys.exit(err.exit_status)
    command_line()


def runner_requirements() -> list[str] | None:
    """The distributions the `runner` extra requires, from the installed blockkit-eo's metadata.

    Read from `Requires-Dist: NAME...; extra == "runner"` (plain text: `packaging`, which
    parses markers, is itself part of the extra). None when blockkit-eo's metadata is not
    there (a source tree on the path, not installed).
    """
    from importlib.metadata import PackageNotFoundError, requires

    try:
        lines = requires(DIST_NAME) or []
    except PackageNotFoundError:
        return None
    return [name for name, marker in _requirements(lines) if "runner" in _EXTRA.findall(marker)]


def _requirements(lines: list[str]) -> list[tuple[str, str]]:
    """(name, marker) of each `Requires-Dist` line of a distribution's metadata."""
    found = []
    for line in lines:
        spec, _, marker = line.partition(";")
        name = _NAME.match(spec)
        if name:
            found.append((name.group(1), marker))
    return found


def needs_runner(module: str) -> bool:
    """Whether a module missing when the command line is imported means: install the `runner` extra.

    Yes when a distribution of the extra is not installed (the case this exists for: a block
    image or environment holds the SDK only), or when the missing module belongs to one of
    them or to their dependencies (a broken install). Without blockkit-eo's metadata: yes for
    any module that is not blockkit's own. Runs only when the import failed, so the command
    line's start pays nothing for it.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    top = module.split(".")[0]
    names = runner_requirements()
    if names is None:
        return bool(top) and top != "blockkit"
    extra = {_canonical(n) for n in names}
    closure: set[str] = set()
    absent: set[str] = set()  # dependencies not installed: left out by a marker, or a broken install
    pending = list(extra)
    while pending:
        name = _canonical(pending.pop())
        if name in closure:
            continue
        closure.add(name)
        try:
            lines = distribution(name).requires or []
        except PackageNotFoundError:
            if name in extra:
                return True  # a distribution of the extra is not installed
            absent.add(name)  # left out by its marker (another platform or Python), or missing
            continue
        pending += [dep for dep, marker in _requirements(lines) if not _EXTRA.search(marker)]
    if _canonical(top) in absent:
        return True  # a dependency of the extra that is not installed, imported under its own name
    from importlib.metadata import packages_distributions

    return any(_canonical(owner) in closure for owner in packages_distributions().get(top, []))
