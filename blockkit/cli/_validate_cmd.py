"""`blockkit validate PATH`: a block folder, a manifest, a data.json, a params file or a workflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import typer

from blockkit.contract._datajson import DATA_JSON, load_data_json, parse_data_json
from blockkit.cli._console import reported_errors, say
from blockkit.contract.errors import InputParametersError, ValidationError
from blockkit.contract._manifest import MANIFEST_FILE, Manifest, load_manifest, read_json_file
from blockkit.contract._parameters import parse_parameters_text, resolve_parameters


def validate_path(path: Path, block: Path | None = None, warn: Callable[[str], None] = say) -> list[str]:
    """Validate whatever PATH is; return what was checked, raise BlockkitError on the first bad item.

    A manifest's accepted oddities (a required parameter with a default) go to `warn` as
    `warning: ...` lines, as a workflow run prints them.
    """
    checked: list[str] = []
    if not path.exists():
        raise ValidationError(f"{path} does not exist")
    if path.is_dir():
        if (path / MANIFEST_FILE).is_file():
            manifest = _manifest(path, warn)
            asks = f"; asks for {', '.join(manifest.privileges)}" if manifest.privileges else ""
            checked.append(f"manifest {path / MANIFEST_FILE} ({manifest.type} block {manifest.name!r}{asks})")
            from blockkit.runner._plan import resolve_entry

            resolve_entry(path.resolve(), manifest.command)  # manifest, own Dockerfile or common layouts
        if (path / DATA_JSON).is_file():
            fc = load_data_json(path, required=False)
            checked.append(f"{path / DATA_JSON} ({len(fc)} features)")
        elif (path / "catalog.json").is_file():
            from blockkit.runtime._stac import features_from_catalog

            fc = features_from_catalog(path)
            checked.append(f"STAC catalog {path / 'catalog.json'} ({len(fc)} items)")
        if not checked:
            raise ValidationError(f"{path} holds no {MANIFEST_FILE}, {DATA_JSON} or catalog.json")
        return checked
    if path.suffix in (".yaml", ".yml"):
        from blockkit.runner._workflow import load_workflow
        from blockkit.runner._plan import plan_workflow

        workflow = load_workflow(path)
        plan = plan_workflow(workflow)
        return [f"workflow {path} ({len(plan.steps)} steps: {', '.join(s.name for s in plan.steps)})"]
    if path.name == MANIFEST_FILE:
        manifest = _manifest(path, warn)
        return [f"manifest {path} ({manifest.type} block {manifest.name!r})"]
    if path.name == DATA_JSON:
        fc = load_data_json(path.parent, required=False)
        return [f"{path} ({len(fc)} features)"]
    data = read_json_file(path, "file", limit=1 << 30)
    if isinstance(data, dict) and "_up42_specification_version" in data:
        manifest = _manifest(path, warn)
        return [f"manifest {path} ({manifest.type} block {manifest.name!r})"]
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        parse_data_json(path.read_bytes(), str(path))
        from blockkit.contract._datajson import validate_feature_collection
        from blockkit.contract.errors import WrongInputError

        problems = validate_feature_collection(data, path.parent)
        if problems:
            raise WrongInputError.from_problems(f"invalid {path}", problems)
        return [f"{path} ({len(data['features'])} features)"]
    if block is None:
        raise InputParametersError(f"{path} looks like a parameters file: give the block with --block DIR")
    manifest = load_manifest(block)
    params = parse_parameters_text(json.dumps(data) if data is not None else None, str(path))
    resolve_parameters(manifest, params)
    return [f"parameters {path} for block {manifest.name!r}"]


def _manifest(path: Path, warn: Callable[[str], None]) -> Manifest:
    """A block folder's or a manifest file's manifest; its accepted oddities go to `warn`."""
    manifest = load_manifest(path)
    for line in manifest.warnings:
        warn(f"warning: {line}")
    return manifest


def register(app: typer.Typer) -> None:
    """Add the `validate` command."""

    @app.command()
    def validate(
        path: Path = typer.Argument(..., help="block folder, UP42Manifest.json, data.json, params file or workflow.yaml"),
        block: Optional[Path] = typer.Option(None, "--block", help="block folder whose manifest checks a params file"),
    ) -> None:
        """Validate a block, a manifest, a data.json, a parameters file or a workflow offline."""
        with reported_errors():
            checked = validate_path(path, block)
        for item in checked:
            typer.echo(f"valid: {item}")
