"""Finish the raw output of a block whose image has no blockkit: `python -m blockkit.export.finish`.

A block built from its own Dockerfile (UP42 style) runs in an exported CWL workflow as its
image runs it: its own command, `/tmp/input` staged read-only, `/tmp/output` the tool's
output folder (`DockerRequirement.dockerOutputDirectory`), `/tmp/quicklooks` a link into a
hidden folder of it (`.blockkit-quicklooks`). Nothing of blockkit runs in that container, so
a second tool, in blockkit's helper image, takes the raw folder over as `blockkit run`
takes a step's output over:

* only regular files and folders are taken; a symlink, device, fifo or socket anywhere in
  the raw output fails the step with NO_OUTPUT_ERROR (6), naming it, so a link to a file
  outside the block's output (`/etc/passwd`, another step's folder) never reaches a
  downstream step or the workflow result;
* data.json must be there and valid: every `up42.data_path` relative, inside the folder
  (no `..`, not absolute) and existing, else NO_OUTPUT_ERROR;
* the quicklooks go to their own folder; a propagating step forwards its input; a STAC
  catalog is written beside data.json, as for every exported step;
* scattered steps (`--name` repeated) finish every part the same way and merge them as
  `blockkit.runtime.scatter.merge` does.

Before a fan-in step (`after: [a, b]`), `--fan-in DIR --upstream a --upstream b` writes the
merged data.json into DIR (whose `a/`, `b/` hold the upstream outputs), as the runner does;
the block's tool stages it at `/tmp/input/data.json` beside `/tmp/input/a/`, `/tmp/input/b/`.

Files are hard-linked where the engine staged the raw folder on the same file system,
copied otherwise; the bytes are the block's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from blockkit.contract._datajson import DATA_JSON, load_data_json, write_data_json
from blockkit.contract.errors import BlockkitError, NoOutputError

#: The hidden folder of a raw output that `/tmp/quicklooks` points to inside the block's container.
RAW_QUICKLOOKS = ".blockkit-quicklooks"


def take_over(raw: Path, output_dir: Path, quicklook_dir: Path) -> None:
    """Link (or copy) the raw output's regular files into output_dir and quicklook_dir; refuse anything else."""
    from blockkit.runtime._propagation import link_tree

    output_dir.mkdir(parents=True, exist_ok=True)
    quicklook_dir.mkdir(parents=True, exist_ok=True)
    if raw.is_symlink() or not raw.is_dir():
        raise NoOutputError(f"the block's output {raw} is not a folder")
    for child in sorted(raw.iterdir()):
        try:
            if child.name == RAW_QUICKLOOKS and not child.is_symlink() and child.is_dir():
                for quicklook in sorted(child.iterdir()):
                    link_tree(quicklook, quicklook_dir / quicklook.name, base=quicklook_dir)
                continue
            link_tree(child, output_dir / child.name, base=output_dir)
        except BlockkitError as err:
            raise NoOutputError(f"the block's output is refused: {err.message}") from None
    data = output_dir / DATA_JSON
    if not data.exists():
        raise NoOutputError("the block exited 0 but wrote no data.json")
    try:
        load_data_json(output_dir, required=True)
    except BlockkitError as err:
        raise NoOutputError(f"the step exited 0 but its output is invalid: {err.message}",
                            problems=err.problems) from None


def finish(raw: Path, output_dir: Path, quicklook_dir: Path, *, input_dir: Path | None,
           propagate: bool, stac: bool) -> None:
    """One raw output: take it over, forward the input if asked, write the STAC catalog."""
    take_over(raw, output_dir, quicklook_dir)
    fc = load_data_json(output_dir, required=True)
    if propagate and input_dir is not None:
        from blockkit.runtime._propagation import forward_all

        fc.features.extend(forward_all(load_data_json(input_dir, required=False).features, fc.features,
                                       input_dir, output_dir))
        write_data_json(output_dir, fc)
    if stac:
        from blockkit.runtime._stac import write_catalog

        write_catalog(output_dir, fc)


def finish_parts(
    names: Sequence[str], raws: Sequence[Path], inputs: Sequence[Path | None], work: Path,
    output_dir: Path, quicklook_dir: Path, *, propagate: bool, stac: bool,
) -> int:
    """Scattered: finish every part under `work`, then merge them into output_dir; returns the feature count."""
    from blockkit.runtime.scatter import merge

    parts: list[tuple[str, Path, Path | None]] = []
    for name, raw, part_input in zip(names, raws, inputs):
        folder, quicklooks = work / "output" / name, work / "quicklooks" / name
        try:
            finish(raw, folder, quicklooks, input_dir=part_input, propagate=propagate, stac=False)
        except BlockkitError as err:
            raise type(err)(f"feature {name!r}: {err.message}", problems=err.problems) from None
        parts.append((name, folder, quicklooks))
    quicklook_dir.mkdir(parents=True, exist_ok=True)
    count = merge(parts, output_dir, quicklook_dir)
    if stac:
        from blockkit.runtime._stac import write_catalog

        write_catalog(output_dir, load_data_json(output_dir, required=False))
    return count


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m blockkit.export.finish", description=__doc__.splitlines()[0])
    parser.add_argument("--step", required=True, help="step name (for messages)")
    parser.add_argument("--fan-in", type=Path, help="write the merged fan-in data.json into this folder and stop")
    parser.add_argument("--upstream", action="append", default=[], help="upstream step name (fan-in), in order")
    parser.add_argument("--raw", action="append", type=Path, default=[],
                        help="the block's raw output folder (repeated with --name for a scattered step)")
    parser.add_argument("--name", action="append", default=[], help="part name of each --raw (scattered step)")
    parser.add_argument("--input", action="append", type=Path, default=[],
                        help="the step's input folder, or each part's (for --propagate)")
    parser.add_argument("--work", type=Path, help="folder for the finished parts (scattered step)")
    parser.add_argument("--output", type=Path, help="output folder (created)")
    parser.add_argument("--quicklooks", type=Path, help="quicklook folder (created)")
    parser.add_argument("--propagate", action="store_true", help="forward the input features to the output")
    parser.add_argument("--stac", action="store_true", help="write a STAC catalog.json beside data.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Finish one raw output or merge the finished parts; the error's exit code with one line on failure."""
    args = _argument_parser().parse_args(argv)
    try:
        if args.fan_in is not None:
            from blockkit.runtime._propagation import merge_upstreams

            merged = merge_upstreams(args.fan_in, args.upstream)
            print(f"[blockkit] step {args.step!r}: merged {len(merged.features)} feature(s) of "
                  f"{', '.join(args.upstream)}", file=sys.stderr, flush=True)
            return 0
        if args.output is None or args.quicklooks is None or not args.raw:
            raise NoOutputError("--raw, --output and --quicklooks are needed (or --fan-in)")
        if args.name:
            if len(args.name) != len(args.raw) or (args.input and len(args.input) != len(args.raw)):
                raise NoOutputError(f"{len(args.name)} --name, {len(args.raw)} --raw and {len(args.input)} --input "
                                    "do not match")
            inputs: list[Path | None] = list(args.input) if args.input else [None] * len(args.raw)
            count = finish_parts(args.name, args.raw, inputs, args.work or args.output.parent / "_parts",
                                 args.output, args.quicklooks, propagate=args.propagate, stac=args.stac)
            print(f"[blockkit] step {args.step!r}: merged {len(args.name)} part(s), {count} feature(s)",
                  file=sys.stderr, flush=True)
            return 0
        if len(args.raw) != 1 or len(args.input) > 1:
            raise NoOutputError("one --raw and at most one --input without --name")
        finish(args.raw[0], args.output, args.quicklooks, input_dir=args.input[0] if args.input else None,
               propagate=args.propagate, stac=args.stac)
        return 0
    except BlockkitError as err:
        print(err.headline(), file=sys.stderr, flush=True)
        print(f"[blockkit] step {args.step!r}: failed with exit code {int(err.exit_code)} ({err.exit_code.name})",
              file=sys.stderr, flush=True)
        return int(err.exit_code)


if __name__ == "__main__":
    sys.exit(main())
