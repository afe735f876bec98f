"""`blockkit push`: tag the images a workflow (or one block) needs with a registry prefix and push them.

The names pushed are the ones `blockkit export cwl --registry R` writes into
`dockerPull`: `R/<local image name>`, e.g. `registry.example.org/eo/blockkit/ndvi:505e58a54793`,
so a cluster engine (Toil on Slurm or Kubernetes, Calrissian, an ADES) can pull what the
exported document names. Credentials are the Docker daemon's (`docker login R`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from blockkit.contract.errors import ApiConnectionError, BlockkitError, InputParametersError, PushError, WrongInputError

#: host[:port] and an optional path of lower-case components (Docker's reference grammar, simplified).
_REGISTRY = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:]+\])"
    r"(?::[0-9]{1,5})?"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)


@dataclass(frozen=True)
class Pushed:
    """One image pushed: the local name, the registry name and the digest the registry answered."""

    local: str
    remote: str
    digest: str | None


def check_registry(registry: str) -> str:
    """The registry prefix without a trailing '/', or InputParametersError saying what is wrong."""
    value = registry.strip().rstrip("/")
    if "@" in value:  # user:password@host: never echo it (it may hold a secret)
        raise InputParametersError("--registry must not hold credentials (user@...); log in with "
                                   "`docker login HOST` and give only host[:port][/path]")
    if "://" in value:
        raise InputParametersError(f"--registry {registry!r}: give host[:port][/path] without a scheme "
                                   "(the daemon chooses https, or http for 127.0.0.0/8 and insecure registries)")
    if not _REGISTRY.match(value):
        raise InputParametersError(f"--registry {registry!r} is not host[:port][/path] (path components in "
                                   "lower case letters, digits, '.', '_' or '-')")
    return value


def remote_name(registry: str, image: str) -> str:
    """The name an image gets under a registry prefix (the rule of `export cwl --registry`)."""
    return f"{registry.rstrip('/')}/{image}"


def _split_tag(ref: str) -> tuple[str, str]:
    """repository, tag of a reference (`latest` when it has none)."""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1:]
    return ref, "latest"


def _push_stream(lines: Iterable[dict[str, Any]]) -> tuple[str | None, str | None]:
    """(digest, error) from the daemon's JSON progress: errors come in the stream, not as exceptions."""
    digest = error = None
    for line in lines:
        if not isinstance(line, dict):
            continue
        if line.get("error") or line.get("errorDetail"):
            error = str(line.get("error") or (line.get("errorDetail") or {}).get("message") or "push failed")
        aux = line.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            digest = str(aux["Digest"])
    return digest, error


def _connection_problem(text: str) -> bool:
    words = ("connection refused", "no such host", "dial tcp", "i/o timeout", "timeout", "server gave http response",
             "network is unreachable", "connection reset", "tls:", "eof")
    return any(w in text.lower() for w in words)


def push_images(
    images: Iterable[str], registry: str, *, client: Any, say: Callable[[str], None] = lambda text: None,
) -> list[Pushed]:
    """Tag each local image `registry/<image>` and push it; stops at the first failure with one line.

    Args:
        images: the local image references to push (each pushed once, in order).
        registry: the registry prefix (`host[:port][/path]`) the images are tagged under.
        client: a Docker client (`docker.DockerClient`) talking to the daemon that holds the images.
        say: called with one line per pushed image (`pushed <remote> (<digest>)`).

    Raises WrongInputError for an image not on the daemon, ApiConnectionError when the registry
    cannot be reached, PushError for any other refused push; a tag made for a failed push is removed.
    """
    from blockkit.runner._docker_engine import error_line

    registry = check_registry(registry)
    pushed: list[Pushed] = []
    for local in dict.fromkeys(images):  # each image once, in order
        remote = remote_name(registry, local)
        repository, tag = _split_tag(remote)
        try:
            image = client.images.get(local)
        except Exception as exc:  # noqa: BLE001 - docker's NotFound and API errors: both mean "not here"
            raise WrongInputError(f"image {local} is not on this Docker daemon ({error_line(exc)}); "
                            "build it first (blockkit build BLOCK_DIR)") from None
        tagged_here = remote not in (image.tags or [])
        try:
            image.tag(repository, tag=tag)
            digest, error = _push_stream(client.images.push(repository, tag=tag, stream=True, decode=True))
        except Exception as exc:  # noqa: BLE001 - requests/docker errors while talking to the daemon
            error, digest = error_line(exc), None
        if error and tagged_here:
            try:  # leave no registry tag behind for an image that is not in the registry
                client.images.remove(remote, noprune=True)
            except Exception:  # noqa: BLE001 - the push error is the one to report
                pass
        if error:
            where = f"cannot push {remote}: {error}"
            if _connection_problem(error):
                raise ApiConnectionError(f"{where}; is the registry running and reachable from the Docker daemon?")
            if "denied" in error.lower() or "unauthorized" in error.lower() or "authentication" in error.lower():
                raise PushError(f"{where}; log in first: docker login {registry.split('/')[0]}")
            raise PushError(where)
        say(f"pushed {remote}" + (f" ({digest})" if digest else ""))
        pushed.append(Pushed(local=local, remote=remote, digest=digest))
    return pushed


def images_to_push(
    target: Path, *, build: bool, base_image: str, wheelhouse: Path | None = None,
    say: Callable[[str], None] = lambda text: None,
) -> list[str]:
    """The local images a workflow file (every step's) or a block folder needs, built unless `build` is off.

    Args:
        target: a workflow file or a block folder (one with UP42Manifest.json).
        build: build (or reuse) the images; off, only a workflow's expected image names are
            returned (a block folder needs building).
        base_image: the image blocks without their own Dockerfile are built on.
        wheelhouse: the folder of wheels the builds install from (None: $BLOCKKIT_WHEELHOUSE, else `.wheelhouse`).
        say: called with one line per built or reused image.
    """
    from blockkit.contract._manifest import MANIFEST_FILE
    from blockkit.export import _cwl as export

    target = Path(target)
    if target.is_dir():
        if not (target / MANIFEST_FILE).is_file():
            raise InputParametersError(f"{target} is a folder without {MANIFEST_FILE}; give a block folder or a workflow file")
        from blockkit.runner._build import build_block_image, own_dockerfile

        if not build:
            raise InputParametersError("--no-build needs a workflow file; for a block folder, push builds (or reuses) its image")
        # A block with its own Dockerfile keeps its own FROM, as under `blockkit run`.
        base = None if own_dockerfile(target.resolve()) is not None else base_image
        built = build_block_image(target, base_image=base, wheelhouse=wheelhouse)
        say(f"image {built.tag} ({'built' if built.rebuilt else 'up to date'})")
        return [built.tag]
    from blockkit.runner._plan import plan_workflow
    from blockkit.runner._workflow import load_workflow

    plan = plan_workflow(load_workflow(target))
    if build:
        images = export.build_images(plan, base_image=base_image, wheelhouse=wheelhouse, say=say)
    else:
        images = export.expected_images(plan, base_image=base_image)
    # The helper image too, when a step's image has no blockkit (the export names it).
    helper = [images[export.HELPER]] if images.get(export.HELPER) else []
    return list(dict.fromkeys([*(images[s.name] for s in plan.steps), *helper]))
