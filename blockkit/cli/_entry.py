"""The `blockkit` console script: the command line, or one line saying how to install it.

Block images and block environments hold the SDK only (`pip install blockkit-eo`); the command
line, runner, storage and gateway need `blockkit-eo[runner]`. Without them, `blockkit` says so
in one line instead of a traceback.
"""

from __future__ import annotations

import sys

#: The top-level packages of the `runner` extra the command line imports.
RUNNER_PACKAGES = frozenset({"typer", "rich", "yaml", "cryptography", "boto3", "botocore", "requests", "packaging"})


def main() -> None:
    """Run the command line (`blockkit.cli.main`)."""
    try:
        from blockkit.cli.main import main as command_line
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in RUNNER_PACKAGES:
            raise
        from blockkit.contract.errors import WorkflowError

        err = WorkflowError(f"the blockkit command line needs the runner ({exc.name} is not installed): "
                            "pip install 'blockkit-eo[runner]'")
        print(err.headline(), file=sys.stderr)
        sys.exit(err.exit_status)
    command_line()
