"""Options several commands share, declared once so their names, defaults and help stay the same."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

#: The image blocks are built on when a command builds them (`export cwl`, `push`).
DEFAULT_BASE_IMAGE = "blockkit-base:bookworm"

#: `--base-image IMAGE` (default DEFAULT_BASE_IMAGE).
BaseImage = Annotated[str, typer.Option("--base-image", help="image blocks are built on")]

#: `--wheelhouse DIR` (default: none).
Wheelhouse = Annotated[Optional[Path], typer.Option("--wheelhouse", help="host folder of wheels for offline builds")]
