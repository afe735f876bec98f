"""The block lifecycle: read input, validate, run the author's code, validate and write output."""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Sequence

from blockkit.contract._datajson import (
    DATA_JSON,
    FeatureCollection,
    load_data_json,
    validate_feature_collection,
    write_data_json,
)
from blockkit.contract.errors import (
    BlockkitError,
    ExitCode,
    NoInputError,
    NoOutputError,
    OutOfMemory,
    WrongInputError,
)
from blockkit.contract._manifest import MANIFEST_FILE, Manifest, load_manifest
from blockkit.contract._parameters import parse_parameters_text, resolve_parameters
from blockkit.runtime._context import BlockContext, get_logger
from blockkit.runtime._propagation import forward_all
from blockkit.runtime._query import Query

ProcessFn = Callable[[FeatureCollection, BlockContext], Any]
FetchFn = Callable[[Query, BlockContext], Any]


def find_manifest(source_file: str | None, env: Mapping[str, str]) -> Path | None:
    """The block's manifest: `BLOCKKIT_MANIFEST`, else next to the code or one folder up, else /block."""
    if env.get("BLOCKKIT_MANIFEST"):
        return Path(env["BLOCKKIT_MANIFEST"])
    candidates: list[Path] = []
    if source_file:
        here = Path(source_file).resolve().parent
        candidates += [here / MANIFEST_FILE, here.parent / MANIFEST_FILE]
    candidates.append(Path("/block") / MANIFEST_FILE)
    return next((c for c in candidates if c.is_file()), None)


if TYPE_CHECKING:
    import argparse


class _NoArguments(NamedTuple):
    """What `_argument_parser` gives for no arguments (a block in its container is started without any)."""

    input: Path | None = None
    output: Path | None = None
    quicklooks: Path | None = None
    params: str | None = None
    dry_run: bool = False


def _argument_parser(prog: str) -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description="Run this blockkit block.")
    parser.add_argument("--input", type=Path, help="input folder (default $BLOCKKIT_INPUT_DIR or /tmp/input)")
    parser.add_argument("--output", type=Path, help="output folder (default $BLOCKKIT_OUTPUT_DIR or /tmp/output)")
    parser.add_argument("--quicklooks", type=Path, help="quicklook folder (default /tmp/quicklooks)")
    parser.add_argument("--params", help="parameters as JSON or @file (default $UP42_TASK_PARAMETERS)")
    parser.add_argument("--dry-run", action="store_true", help="report what would be fetched (data blocks)")
    return parser


def _params_text(arg: str | None, env: Mapping[str, str]) -> tuple[str | None, str]:
    if arg is None:
        return env.get("UP42_TASK_PARAMETERS"), "UP42_TASK_PARAMETERS"
    if arg.startswith("@"):
        path = Path(arg[1:])
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            from blockkit.contract.errors import InputParametersError

            raise InputParametersError(f"cannot read parameters file {path}: {exc}") from None
    return arg, "--params"


class BlockRunner:
    """Runs one block function through the whole contract of SPEC §2."""

    def __init__(self, fn: Callable[..., Any], kind: str, source_file: str | None) -> None:
        self.fn = fn
        self.kind = kind  # "processing" or "data"
        self.source_file = source_file

    def context(self, argv: Sequence[str] | None, env: Mapping[str, str]) -> BlockContext:
        """Build the context: directories, validated parameters, mode."""
        given_args = sys.argv[1:] if argv is None else list(argv)
        # argparse (with shutil) is 2 ms of every block start, and of every feature of a scattered step.
        args: Any = (_argument_parser(Path(self.source_file or "block").name).parse_args(given_args)
                     if given_args else _NoArguments())
        manifest_file = find_manifest(self.source_file, env)
        manifest = load_manifest(manifest_file) if manifest_file else None
        ctx = BlockContext.from_env(
            env, input_dir=args.input, output_dir=args.output, quicklook_dir=args.quicklooks, manifest=manifest
        )
        if args.dry_run:
            ctx.mode = "DRY_RUN"
        text, where = _params_text(args.params, env)
        given = parse_parameters_text(text, where)
        ctx.params = resolve_parameters(manifest, given) if manifest else given
        return ctx

    def execute(self, ctx: BlockContext) -> FeatureCollection:
        """Run the block in a prepared context and write its validated output."""
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        input_fc = FeatureCollection()
        if self.kind == "data":
            query = Query.from_params(ctx.params)
            result = self.fn(query, ctx)
        else:
            input_fc = read_input(ctx.input_dir)
            result = self.fn(input_fc, ctx)
        fc = self._collect(result, ctx)
        # Under blockkit's runner the runner forwards (as the host user, so hard links always work).
        runner_forwards = ctx.env.get("BLOCKKIT_RUNNER_FORWARDS") == "1"
        if ctx.manifest is not None and ctx.manifest.propagate and not runner_forwards:
            fc.features.extend(forward_all(input_fc.features, fc.features, ctx.input_dir, ctx.output_dir))
        problems = validate_feature_collection(fc.to_dict(), ctx.output_dir)
        if problems:
            raise NoOutputError.from_problems("the block's output is invalid", problems)
        try:
            write_data_json(ctx.output_dir, fc)
        except WrongInputError as err:  # a value in the block's output that JSON cannot hold
            raise NoOutputError(f"the block's output is invalid: {err.message}") from None
        if ctx.env.get("BLOCKKIT_WRITE_STAC", "").lower() in ("1", "true", "yes"):
            from blockkit.runtime._stac import write_catalog

            write_catalog(ctx.output_dir, fc)
        return fc

    def _collect(self, result: Any, ctx: BlockContext) -> FeatureCollection:
        if result is None:
            # UP42-style blocks may write data.json themselves; then that file is the output.
            if (ctx.output_dir / DATA_JSON).is_file():
                return load_data_json(ctx.output_dir, required=False, check_files=False)
            raise NoOutputError("the block returned nothing; return a FeatureCollection (it may be empty)")
        try:
            return FeatureCollection.coerce(result)
        except (TypeError, AttributeError):
            raise NoOutputError(
                f"the block returned {type(result).__name__}; return a FeatureCollection or a list of features"
            ) from None

    def main(self, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
        """Run the block and return its exit code; errors become one line plus details."""
        env = os.environ if env is None else env
        logger = get_logger("blockkit.block")
        try:
            ctx = self.context(argv, env)
            logger.info("running %s block (mode %s)", self.kind, ctx.mode)
            fc = self.execute(ctx)
            logger.info("wrote %d feature(s) to %s", len(fc), ctx.output_dir / DATA_JSON)
            return ExitCode.OK
        except BlockkitError as err:
            return report(err)
        except MemoryError:
            return report(OutOfMemory("the block ran out of memory (MemoryError)"))
        except KeyboardInterrupt:
            print("[UNEXPECTED_ERROR] interrupted", file=sys.stderr, flush=True)
            return 130
        except Exception as exc:  # noqa: BLE001 - the edge: anything uncaught is exit 1 with its traceback
            print(f"[UNEXPECTED_ERROR] {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            import traceback

            traceback.print_exc()
            return ExitCode.UNEXPECTED_ERROR

    def run(self, argv: Sequence[str] | None = None) -> None:
        """Run as a program: exit with the block's exit code."""
        sys.exit(self.main(argv))


def read_input(input_dir: Path) -> FeatureCollection:
    """The input features: data.json, or a STAC catalog (App Package layout) when there is none."""
    if not (input_dir / DATA_JSON).exists() and (input_dir / "catalog.json").is_file():
        from blockkit.runtime._stac import features_from_catalog

        fc = features_from_catalog(input_dir)
        if not fc.features:
            raise NoInputError(f"no input: {input_dir / 'catalog.json'} has no items")
        return fc
    return load_data_json(input_dir)


def report(err: BlockkitError) -> int:
    """Print an error's headline and details to stderr and return its exit code."""
    print(err.headline(), file=sys.stderr, flush=True)
    details = err.details()
    if details:
        print(details, file=sys.stderr, flush=True)
    return int(err.exit_code)


def _source_of(obj: Any) -> str | None:
    try:
        return inspect.getsourcefile(obj)
    except TypeError:
        return None


def processing_block(fn: ProcessFn) -> BlockRunner:
    """Turn `fn(feature_collection, ctx) -> FeatureCollection` into a runnable processing block."""
    return BlockRunner(fn, "processing", _source_of(fn))


def data_block(fn: FetchFn) -> BlockRunner:
    """Turn `fn(query, ctx) -> FeatureCollection` into a runnable data block."""
    return BlockRunner(fn, "data", _source_of(fn))


class _BlockClass:
    """Shared behaviour of the UP42-style base classes."""

    kind = "processing"

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.context: BlockContext | None = None

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> Any:
        """Build the block from its (validated) parameters, as UP42's blocks did."""
        return cls(**dict(params))

    @classmethod
    def _runner(cls) -> BlockRunner:
        def call(arg: Any, ctx: BlockContext) -> Any:
            instance = cls.from_dict(ctx.params)
            instance.context = ctx
            return instance._call(arg, ctx)

        return BlockRunner(call, cls.kind, _source_of(cls))

    def _call(self, arg: Any, ctx: BlockContext) -> Any:
        raise NotImplementedError

    @classmethod
    def main(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
        """Run the block and return its exit code."""
        return cls._runner().main(argv, env)

    @classmethod
    def run(cls, argv: Sequence[str] | None = None) -> None:
        """Run as a program: exit with the block's exit code."""
        sys.exit(cls.main(argv))


class ProcessingBlock(_BlockClass):
    """UP42-style processing block: override `process(feature_collection)`."""

    kind = "processing"

    def process(self, input_fc: FeatureCollection) -> FeatureCollection:
        """Turn the input features into output features."""
        raise NotImplementedError("override process(input_fc)")

    def _call(self, arg: Any, ctx: BlockContext) -> Any:
        return self.process(arg)


class DataBlock(_BlockClass):
    """UP42-style data block: override `fetch(query, dry_run)`."""

    kind = "data"

    def fetch(self, query: Query, dry_run: bool = False) -> FeatureCollection:
        """Fetch the data matching the query (only describe it when dry_run)."""
        raise NotImplementedError("override fetch(query, dry_run)")

    def _call(self, arg: Any, ctx: BlockContext) -> Any:
        return self.fetch(arg, ctx.dry_run)
