"""The block context: directories, parameters, mode and logger a block runs with."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from blockkit.contract._datajson import DATA_PATH, check_data_path, data_path_of
from blockkit.contract.errors import InvalidArgument, WrongInputError
from blockkit.contract._manifest import Manifest

DEFAULT_INPUT_DIR = Path("/tmp/input")
DEFAULT_OUTPUT_DIR = Path("/tmp/output")
DEFAULT_QUICKLOOK_DIR = Path("/tmp/quicklooks")
MODES = ("DEFAULT", "DRY_RUN")
_HANDLER_MARK = "_blockkit_handler"


if TYPE_CHECKING:
    _StreamHandler = logging.StreamHandler[Any]
else:
    _StreamHandler = logging.StreamHandler


class _CurrentStderr(_StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes (a CLI runner or a test may swap it)."""

    @property  # a read-only view of sys.stderr
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def get_logger(name: str = "blockkit", stream: Any = None) -> logging.Logger:
    """The blockkit logger with exactly one stderr handler, however often it is asked for."""
    root = logging.getLogger("blockkit")
    if not any(getattr(h, _HANDLER_MARK, False) for h in root.handlers):
        handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
        root.setLevel(os.environ.get("BLOCKKIT_LOG_LEVEL", "INFO").upper())
        root.propagate = False
    return logging.getLogger(name) if name.startswith("blockkit") else root.getChild(name)


@dataclass
class BlockContext:
    """What a running block sees: its folders, validated parameters, mode and logger."""

    input_dir: Path = DEFAULT_INPUT_DIR
    output_dir: Path = DEFAULT_OUTPUT_DIR
    quicklook_dir: Path = DEFAULT_QUICKLOOK_DIR
    params: dict[str, Any] = field(default_factory=dict)
    mode: str = "DEFAULT"
    manifest: Manifest | None = None
    logger: logging.Logger = field(default_factory=lambda: get_logger("blockkit.block"))
    env: Mapping[str, str] = field(default_factory=dict)
    _progress: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def dry_run(self) -> bool:
        """True when the job only reports what it would fetch."""
        return self.mode == "DRY_RUN"

    def progress(self, done: int, total: int) -> None:
        """Tell the runner how far the block is: `done` of `total` units (shown as a bar).

        Prints one `BLOCKKIT_PROGRESS <done>/<total>` line on stdout (throttled to about four a
        second, first and last always); see docs/report.md, "Progress".
        """
        if self._progress is None:
            from blockkit.runtime._progress import ProgressReporter

            self._progress = ProgressReporter()
        self._progress(done, total)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        input_dir: Path | None = None,
        output_dir: Path | None = None,
        quicklook_dir: Path | None = None,
        manifest: Manifest | None = None,
    ) -> BlockContext:
        """Directories and mode from arguments, then `BLOCKKIT_*` variables, then the UP42 defaults."""
        logger = get_logger("blockkit.block")
        mode = (env.get("UP42_JOB_MODE") or "DEFAULT").strip().upper()
        if mode not in MODES:
            logger.warning("UP42_JOB_MODE %r is unknown; running in DEFAULT mode", mode)
            mode = "DEFAULT"
        return cls(
            input_dir=Path(input_dir or env.get("BLOCKKIT_INPUT_DIR") or DEFAULT_INPUT_DIR),
            output_dir=Path(output_dir or env.get("BLOCKKIT_OUTPUT_DIR") or DEFAULT_OUTPUT_DIR),
            quicklook_dir=Path(quicklook_dir or env.get("BLOCKKIT_QUICKLOOK_DIR") or DEFAULT_QUICKLOOK_DIR),
            mode=mode,
            manifest=manifest,
            logger=logger,
            env=dict(env),
        )

    # --- paths ------------------------------------------------------------------------------

    def input_path(self, feature: Mapping[str, Any]) -> Path:
        """Absolute path of a feature's `up42.data_path` in the input folder (checked to be safe)."""
        value = data_path_of(dict(feature))
        if value is None:
            raise WrongInputError(f"feature {feature.get('id', '?')!r} has no {DATA_PATH}")
        problem = check_data_path(value, self.input_dir)
        if problem:
            raise WrongInputError(f"feature {feature.get('id', '?')!r}: {problem}")
        return self.input_dir / value

    def output_path(self, relative: str) -> Path:
        """Absolute path for a relative output data_path, creating its parent folders."""
        problem = check_data_path(relative, None)
        if problem:
            raise InvalidArgument(problem)
        path = self.output_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def quicklook_path(self, feature_id: str, ext: str = "png") -> Path:
        """Where the quicklook of a feature goes (`<quicklook dir>/<id>.<png|jpg>`)."""
        if ext not in ("png", "jpg"):
            raise InvalidArgument("quicklooks are png or jpg")
        if "/" in str(feature_id) or str(feature_id) in ("", ".", ".."):
            raise InvalidArgument(f"feature id {feature_id!r} cannot name a quicklook file")
        self.quicklook_dir.mkdir(parents=True, exist_ok=True)
        return self.quicklook_dir / f"{feature_id}.{ext}"

    # --- features ---------------------------------------------------------------------------

    def new_feature(
        self,
        *,
        geometry: dict[str, Any] | None,
        data_path: str | None = None,
        properties: Mapping[str, Any] | None = None,
        id: str | None = None,  # noqa: A002 - GeoJSON's own name
    ) -> dict[str, Any]:
        """A new GeoJSON feature (with a `bbox` from its geometry), linking `data_path` when given.

        `data_path` is relative to the output folder.
        """
        from blockkit.runtime.geometry import with_bbox
        from blockkit.runtime._propagation import make_feature

        return with_bbox(make_feature(geometry=geometry, data_path=data_path, properties=properties, feature_id=id))

    def derive_feature(self, feature: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
        """An output feature inheriting the input feature's properties (not `up42.*`/`custom.*`).

        It keeps the input's `bbox` when it keeps its geometry, and computes one otherwise.
        """
        from blockkit.runtime.geometry import with_bbox
        from blockkit.runtime._propagation import derive_feature

        keep = feature.get("bbox") if "geometry" not in changes else None
        return with_bbox(derive_feature(feature, **changes), keep=keep)

    def forward(self, feature: Mapping[str, Any], *, prefix: str = "") -> dict[str, Any]:
        """Forward an input feature and its data to the output folder without copying bytes."""
        from blockkit.runtime._propagation import forward_feature

        return forward_feature(feature, self.input_dir, self.output_dir, prefix=prefix)
