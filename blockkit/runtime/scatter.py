"""Scatter over features (`scatter: features`) as CWL runs it: split, one block run per part, merge.

`python -m blockkit.runtime.scatter split ...` runs in the block's image before the
scattered step: it writes one folder per input feature (`<parts>/<name>/`: a data.json
with that one feature and only that feature's files: its data path, local STAC asset files
and item file, hard-linked when the engine staged the input on the same file system, else
copied) and a `cwl.output.json` that lists the parts in input order, with their names.
The engine then runs the block once per part (CWL `scatter`, ScatterFeatureRequirement),
and `python -m blockkit.runtime.scatter merge ...` joins the per-feature outputs into one
folder:

* one data.json: the parts' features in input order; ids are kept, except that an id an
  earlier part already produced becomes `<name>-<id>` (ids stay unique);
* every file of part `<name>` under `<name>/`, and its `up42.data_path` and local STAC asset
  hrefs prefixed `<name>/`;
* each part's quicklooks under `<quicklooks>/<name>/`;
* a STAC catalog.json of the merged features (as every exported step writes).

A part's name is its input feature's id when that is a plain name (letters, digits,
`_`, `-`, starting with a letter or digit, at most 64 characters); any other id is
reduced to those characters and gets 8 hex digits of its SHA-256, so different ids never
share a folder. A feature without an id is named `feature-<sha256 of the feature>`.
The names depend only on the feature, not on its position: adding a feature does not
rename the others' folders.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from blockkit.contract._datajson import (
    DATA_JSON,
    DATA_PATH,
    FeatureCollection,
    check_data_path,
    collection_text,
    data_path_of,
    load_data_json,
    write_atomic,
    write_data_json,
)
from blockkit.contract.errors import BlockkitError, NoInputError, NoOutputError, WrongInputError

PARTS_INDEX = "cwl.output.json"
_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")  # what split gives (a `-<n>` suffix included)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
#: Names the merged output folder uses itself; a part never gets one of them.
_RESERVED = {"catalog", "data"}


def part_name(feature: dict[str, Any]) -> str:
    """The folder name of a feature's part (see the module doc); the same feature, the same name."""
    ident = feature.get("id")
    if ident is None:
        canonical = json.dumps(feature, sort_keys=True, separators=(",", ":"))
        return f"feature-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"
    text = str(ident)
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    base = _UNSAFE.sub("_", text).strip("_-")[:55] or "feature"
    return f"{base}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def part_names(features: Sequence[dict[str, Any]]) -> list[str]:
    """Names for every feature, unique (a repeated id gets `-2`, `-3`, ... in input order)."""
    names: list[str] = []
    taken: set[str] = set()
    for feature in features:
        base = part_name(feature)
        name, n = base, 2
        while name in taken:
            name, n = f"{base}-{n}", n + 1
        taken.add(name)
        names.append(name)
    return names


def _read_features(input_dir: Path) -> FeatureCollection:
    """The input features: data.json, or a STAC catalog when there is none (as a block reads them)."""
    if not (input_dir / DATA_JSON).exists() and (input_dir / "catalog.json").is_file():
        from blockkit.runtime._stac import features_from_catalog

        return features_from_catalog(input_dir)
    return load_data_json(input_dir, required=False)


def _feature_files(feature: dict[str, Any], input_dir: Path) -> list[str]:
    """Relative paths a feature owns in its folder: its data path, its local STAC asset files and item file."""
    from blockkit.runtime._propagation import local_assets

    paths = []
    data_path = data_path_of(feature)
    if data_path:
        paths.append(data_path)
    # An asset file the feature names but nobody wrote (a thumbnail never made) is left out, as a
    # plain step would see it missing; only the data path must exist.
    paths.extend(asset["href"] for asset in local_assets(feature)
                 if asset["href"] not in paths and check_data_path(asset["href"], input_dir) is None)
    item = (feature.get("properties") or {}).get("up42.stac_item")
    if isinstance(item, str) and item and check_data_path(item, input_dir) is None:
        paths.append(item)
    return paths


def split(input_dir: Path, parts_dir: Path) -> list[tuple[str, Path]]:
    """One folder per input feature under parts_dir; returns (name, folder) in input order."""
    from blockkit.runtime._propagation import link_tree

    input_dir = Path(input_dir)
    fc = _read_features(input_dir)
    if not fc.features:
        raise NoInputError(f"no input: {input_dir} has no features to scatter over")
    names = part_names(fc.features)
    parts_dir.mkdir(parents=True, exist_ok=True)
    parts: list[tuple[str, Path]] = []
    for name, feature in zip(names, fc.features):
        part = parts_dir / name
        part.mkdir()
        for rel in _feature_files(feature, input_dir):
            problem = check_data_path(rel, input_dir)
            if problem:
                raise WrongInputError(f"feature {feature.get('id')!r}: {problem}")
            if not (part / rel).exists():  # a data path inside the STAC item folder is already there
                link_tree(input_dir / rel, part / rel)
        # Scratch: the runner splits again on every attempt, a CWL engine after a lost job.
        write_data_json(part, FeatureCollection([feature]), durable=False)
        parts.append((name, part))
    return parts


def _prefixed(feature: dict[str, Any], name: str) -> dict[str, Any]:
    """The feature as the merged folder holds it: its data path, item and local asset hrefs under `<name>/`."""
    from blockkit.runtime._propagation import prefix_local_assets

    out = dict(feature)
    props = dict(out.get("properties") or {})
    if DATA_PATH in props:
        props[DATA_PATH] = f"{name}/{props[DATA_PATH]}"
    if isinstance(props.get("up42.stac_item"), str):
        props["up42.stac_item"] = f"{name}/{props['up42.stac_item']}"
    out["properties"] = props
    prefix_local_assets(out, name)
    return out


def merge(
    parts: Sequence[tuple[str, Path, Path | None]], output_dir: Path, quicklook_dir: Path | None = None,
    *, on_link: Callable[[os.stat_result, os.stat_result], None] | None = None,
) -> int:
    """Join per-feature outputs (name, output folder, quicklook folder) into output_dir (see the module doc).

    The files are hard-linked (copied only across file systems); `on_link(before, after)` sees
    each linked file's stat, as `blockkit.runtime._propagation.link_tree` gives it. The merged
    data.json is written a part at a time, so its memory is one part's, not all of them.
    Returns how many features it holds.
    """
    from blockkit.runtime._propagation import link_tree

    seen_names: set[str] = set()
    taken: set[Any] = set()
    count = 0

    def features() -> Iterator[dict[str, Any]]:
        nonlocal count
        for name, folder, quicklooks in parts:
            if not _NAME.match(name):
                raise WrongInputError(f"part name {name!r} is not a plain folder name")
            if name in seen_names:
                raise WrongInputError(f"part {name!r} is given twice")
            seen_names.add(name)
            if not os.path.lexists(folder / DATA_JSON):  # never a feature silently dropped from the result
                raise NoOutputError(f"feature {name!r}: its run wrote no data.json")
            try:
                fc = load_data_json(folder, required=False)
            except BlockkitError as err:
                raise type(err)(f"feature {name!r}: {err.message}", problems=err.problems) from None
            for child in sorted(folder.iterdir()):
                if child.name == DATA_JSON:
                    continue
                link_tree(child, output_dir / name / child.name, on_link=on_link)
            for feature in fc.features:
                out = _prefixed(feature, name)
                ident = out.get("id")
                if ident is not None:
                    candidate, n = (ident if ident not in taken else f"{name}-{ident}"), 2
                    while candidate in taken:
                        candidate, n = f"{name}-{ident}-{n}", n + 1
                    out["id"] = candidate
                    taken.add(candidate)
                count += 1
                yield out
            if quicklook_dir is not None and quicklooks is not None and quicklooks.is_dir() and any(quicklooks.iterdir()):
                link_tree(quicklooks, quicklook_dir / name, on_link=on_link)

    output_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(output_dir / DATA_JSON, collection_text(features()))
    return count


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m blockkit.runtime.scatter", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    s = sub.add_parser("split", help="one folder per input feature, listed in cwl.output.json")
    s.add_argument("--step", required=True, help="step name (for messages)")
    s.add_argument("--input", type=Path, help="input folder (one upstream, or the workflow input)")
    s.add_argument("--fan-in", type=Path, help="folder whose <step>/ subfolders hold the upstream outputs")
    s.add_argument("--upstream", action="append", default=[], help="upstream step name (fan-in), in order")
    s.add_argument("--parts", type=Path, required=True, help="folder for the parts (created)")
    s.add_argument("--cwl-output", type=Path, required=True, help="where to write cwl.output.json")
    m = sub.add_parser("merge", help="join the per-feature outputs")
    m.add_argument("--step", required=True, help="step name (for messages)")
    m.add_argument("--name", action="append", default=[], help="part name, in input order")
    m.add_argument("--part", action="append", type=Path, default=[], help="part output folder, in the order of --name")
    m.add_argument("--part-quicklooks", action="append", type=Path, default=[],
                   help="part quicklook folder, in the order of --name")
    m.add_argument("--output", type=Path, required=True, help="merged output folder (created)")
    m.add_argument("--quicklooks", type=Path, required=True, help="merged quicklook folder (created)")
    m.add_argument("--stac", action="store_true", help="write a STAC catalog.json beside data.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`split` or `merge`; exit code of the error on failure, with one `[blockkit]` line."""
    args = _argument_parser().parse_args(argv)
    try:
        if args.action == "split":
            if args.fan_in is not None:
                from blockkit.runtime._propagation import merge_upstreams

                merge_upstreams(args.fan_in, args.upstream)
                input_dir = args.fan_in
            elif args.input is not None:
                input_dir = args.input
            else:
                raise NoInputError("scatter: features needs input features, and this step has no input")
            parts = split(input_dir, args.parts)
            base = args.cwl_output.parent
            listing = {
                "parts": [{"class": "Directory", "location": folder.relative_to(base).as_posix()} for _, folder in parts],
                "names": [name for name, _ in parts],
            }
            args.cwl_output.write_text(json.dumps(listing, indent=1), encoding="utf-8")
            print(f"[blockkit] step {args.step!r}: scattering over {len(parts)} feature(s)", file=sys.stderr, flush=True)
            return 0
        if len(args.part) != len(args.name) or (args.part_quicklooks and len(args.part_quicklooks) != len(args.name)):
            raise WrongInputError(f"{len(args.name)} --name, {len(args.part)} --part and "
                                  f"{len(args.part_quicklooks)} --part-quicklooks do not match")
        quicklooks = args.part_quicklooks or [None] * len(args.name)
        args.quicklooks.mkdir(parents=True, exist_ok=True)
        count = merge(list(zip(args.name, args.part, quicklooks)), args.output, args.quicklooks)
        if args.stac:
            from blockkit.runtime._stac import write_catalog

            write_catalog(args.output, load_data_json(args.output, required=False))
        print(f"[blockkit] step {args.step!r}: merged {len(args.name)} part(s), {count} feature(s)",
              file=sys.stderr, flush=True)
        return 0
    except BlockkitError as err:
        print(err.headline(), file=sys.stderr, flush=True)
        print(f"[blockkit] step {args.step!r}: {args.action} failed with exit code {int(err.exit_code)} "
              f"({err.exit_code.name})", file=sys.stderr, flush=True)
        return int(err.exit_code)


if __name__ == "__main__":
    sys.exit(main())
