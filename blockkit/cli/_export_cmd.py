"""`blockkit export cwl WORKFLOW.yaml -o app.cwl`: the workflow as a CWL v1.2 Application Package."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional

import typer

from blockkit.cli._console import reported_errors, say
from blockkit.cli._options import DEFAULT_BASE_IMAGE, BaseImage, Wheelhouse
from blockkit.contract.errors import ExportError

if TYPE_CHECKING:
    from blockkit.runner._plan import Plan

export_app = typer.Typer(
    name="export",
    help="Export a workflow to another engine (CWL: cwltool, Calrissian, Toil, ADES).",
    no_args_is_help=True,
)


def _parse_images(values: list[str]) -> dict[str, str]:
    images: dict[str, str] = {}
    for value in values:
        step, sep, ref = value.partition("=")
        if not sep or not step or not ref:
            raise ExportError(f"--image {value!r} must be STEP=IMAGE")
        images[step] = ref
    return images


@export_app.command("cwl")
def cwl(
    workflow_file: Path = typer.Argument(..., help="workflow.yaml to export"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="CWL file to write (default: stdout)"),
    job: Optional[Path] = typer.Option(None, "--job", help="also write a job order file (inputs and parameters)"),
    build: bool = typer.Option(True, "--build/--no-build",
                               help="build the block images first (default), or only name the tags `blockkit build` gives"),
    image: List[str] = typer.Option([], "--image", help="STEP=IMAGE: use this image for a step (repeatable)"),
    registry: Optional[str] = typer.Option(None, "--registry",
                                           help="prefix image names with a registry (for engines that pull; "
                                                "push them with `blockkit push --registry`)"),
    input_location: Optional[str] = typer.Option(None, "--input",
                                                 help="the workflow input for the job file instead of the workflow's "
                                                      "`input:` (e.g. a folder staged in with `blockkit stage-in`)"),
    leave_output: bool = typer.Option(False, "--leave-output",
                                      help="export a workflow with `output:` anyway: the result stays in the CWL "
                                           "engine's output folder, to be staged out afterwards"),
    base_image: BaseImage = DEFAULT_BASE_IMAGE,
    wheelhouse: Wheelhouse = None,
) -> None:
    """Export a workflow as one packed CWL v1.2 document (OGC EO Application Package)."""
    from blockkit.export import _cwl as export
    from blockkit.runner._plan import plan_workflow
    from blockkit.runner._workflow import load_workflow
    from blockkit.storage._transfer import public_url

    with reported_errors():
        workflow = load_workflow(workflow_file)
        plan = plan_workflow(workflow)  # the same checks and messages as `blockkit validate`
        overrides = _parse_images(image)
        unknown = sorted(set(overrides) - {s.name for s in plan.steps})
        if unknown:
            raise ExportError(f"--image names unknown step(s): {', '.join(unknown)}")
        if input_location is not None and not workflow.input:
            raise ExportError("--input replaces the workflow's `input:`, and this workflow has none")
        export.check_exportable(plan, leave_output=leave_output, input_given=input_location is not None)
        if build:
            images = export.build_images(plan, base_image=base_image, wheelhouse=wheelhouse, say=say)
        else:
            images = _unbuilt_images(plan, base_image, say)
        images.update(overrides)
        if registry is not None:
            from blockkit.export._push import check_registry

            registry = check_registry(registry)
        images = export.with_registry(images, registry)
        for step in plan.steps:
            if step.manifest.s3_gateway:
                say(f"warning: step {step.name!r} wants the S3 gateway sidecar, which CWL cannot start; "
                    "it will see its folders only")
        document = export.export_cwl(plan, images=images, leave_output=leave_output,
                                     input_given=input_location is not None)
        if workflow.output and leave_output:
            say(f"note: the workflow's output {public_url(workflow.output)!r} is not exported; "
                "stage the result out after the run")
        text = export.dump_cwl(document, source=str(workflow_file))
        if output is None:
            typer.echo(text, nl=False)
        else:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text, encoding="utf-8")
            say(f"wrote {output} ({len(plan.steps)} steps)")
        if job is not None:
            location = None
            if workflow.input:
                location = input_location or workflow.input
                if "://" not in location:
                    # As `blockkit run` resolves it: as given, else next to the workflow file.
                    local = Path(location).expanduser()
                    if not local.is_absolute() and not local.exists():
                        local = workflow.base_dir / local
                    location = str(local.resolve())
            if location and "://" in location:
                say(f"note: the job file gives the input as a URL ({public_url(location)}); a platform (ADES) stages it in, "
                    "but cwltool and Toil cannot: stage it in first (blockkit stage-in URL DIR) and export "
                    "with --input DIR")
            job_text = export.dump_job(export.job_order(plan, input_location=location),
                                       secrets=export.secret_inputs(plan))
            job.parent.mkdir(parents=True, exist_ok=True)
            job.write_text(job_text, encoding="utf-8")
            say(f"wrote {job}")


def _unbuilt_images(plan: "Plan", base_image: str, say: Callable[[str], None]) -> dict[str, str]:
    """The tags `blockkit build` would give (when a daemon answers), else `blockkit/<block>:latest`."""
    from blockkit.export import _cwl as export

    try:
        return export.expected_images(plan, base_image=base_image)
    except Exception as exc:  # noqa: BLE001 - no daemon, no base image, no docker SDK: fall back to names
        images = {s.name: export.default_image(s) for s in plan.steps}
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        say(f"note: image tags not computed ({first}); using {', '.join(sorted(set(images.values())))}: "
            "tag your images so, or pass --image STEP=IMAGE")
        return images


def register(app: typer.Typer) -> None:
    """Add the `export` command group (`export cwl`)."""
    app.add_typer(export_app, name="export")
