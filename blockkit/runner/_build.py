"""Build a block's image, offline, tagged by a content hash.

Two ways, chosen by the block folder:

* a block made with blockkit (no `Dockerfile`, or the template's) is built from
  blockkit's `Dockerfile.base`: a venv with blockkit and the block's requirements;
* a block with its own `Dockerfile` (UP42 style) is built from that file, the way
  UP42's Makefile did: `--build-arg manifest=<UP42Manifest.json>`, and the image must
  then carry the manifest in its `up42_manifest` label. blockkit is not installed
  into such an image: the runner only needs environment variables and mounts.

Wheels (blockkit's and the block's requirements) are resolved on the host into a
wheelhouse for the image's Python, so the build itself needs no package index: for
Dockerfile.base they are copied into the build context; for a block's own Dockerfile
pip inside the build is pointed at them (a short-lived local server, nothing stays
in the image). Development tools listed in requirements.txt (pytest, mypy, black,
...) stay out of the image.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blockkit.contract.errors import BaseImageMissingError, BuildError, ManifestError, Problem
from blockkit.runner import _wheelhouse as wheels_
from blockkit.runner._docker_client import DockerError, docker_client, error_line, no_network
from blockkit.runner._image_names import (
    BLOCK_LABEL,
    HASH_LABEL,
    MANIFEST_LABEL,
    OPTIONS_LABEL,
    SOURCE_LABEL,
    block_content_hash,
    blockkit_source_hash,
    blockkit_source_root,
    ignore_for_copy,
    image_tag,
    own_content_hash,
)
from blockkit.runner._wheelhouse import (
    DEV_TOOLS,
    PythonTarget,
    WheelServer,
    cached_resolution,
    complete_in_image,
    drop_dev_requirements,
    fill_wheels,
    resolve_wheelhouse,
    resolve_wheels,
)

if TYPE_CHECKING:
    import docker

DEFAULT_BASE_IMAGE = "blockkit-base:bookworm"
DOCKERFILE_NAME = "Dockerfile.base"
#: A block's own Dockerfile (UP42 style); the template's carries TEMPLATE_MARKER and is not used by `build`.
BLOCK_DOCKERFILE = "Dockerfile"
TEMPLATE_MARKER = "blockkit-template-dockerfile"
#: `--user` choices for images built from Dockerfile.base: uid 1000, or root for platforms that
#: mount a root-owned output folder (UP42 ran blocks as their image's user, root for its bases).
USERS = {"1000": "1000:1000", "root": "0:0"}


@dataclass(frozen=True)
class BuiltImage:
    """A block image: its tag, image id, content hash, and whether this call built it."""

    tag: str
    image_id: str
    content_hash: str
    rebuilt: bool
    #: Which Dockerfile: "Dockerfile.base" or the block's own "Dockerfile".
    dockerfile: str = DOCKERFILE_NAME
    #: One line each: requirements resolved far older than asked, dev tools left out, ...
    warnings: tuple[str, ...] = ()


def build_block_image(
    block_dir: Path | str,
    *,
    base_image: str | None = None,
    wheelhouse: Path | str | None = None,
    client: "docker.DockerClient | None" = None,
    force: bool = False,
    build_args: dict[str, str] | None = None,
    user: str = "1000",
    network: bool = False,
    build: bool = True,
) -> BuiltImage:
    """Build (or reuse) the image of a block folder and return its tag and id.

    Args:
        block_dir: the block folder (with UP42Manifest.json; its own Dockerfile, if any, decides the way).
        base_image: the image to build on (Dockerfile.base), or the image replacing the last external
            `FROM` of a block's own Dockerfile (default: blockkit-base:bookworm, or its own `FROM`).
        wheelhouse: the host folder of wheels (default: $BLOCKKIT_WHEELHOUSE, else `.wheelhouse`).
        client: the Docker client (default: one from the environment).
        force: build again even when an image with the tag exists (without the layer cache).
        build_args: `--build-arg`s for a block's own Dockerfile (e.g. `BASE`); refused for Dockerfile.base.
        user: "1000" or "root", the user of images built from Dockerfile.base.
        network: let a block's own Dockerfile reach the network while it builds (e.g. `apt-get`); pip is
            pointed at the wheelhouse either way.
        build: False only computes the tag (resolving the wheels, which the tag covers) and returns it
            with the existing image's id, or "" when there is none: nothing is built.
    """
    block_dir = Path(block_dir).resolve()
    manifest = read_manifest(block_dir)
    client = client or docker_client()
    if user not in USERS:
        raise BuildError(f"--user must be one of {', '.join(USERS)}, not {user!r}")
    if base_image is not None and not _IMAGE_REF.match(base_image):
        # It is written into a Dockerfile's FROM line: nothing but an image reference may get there.
        raise BuildError(f"--base-image {base_image!r} is not an image reference (name[:tag][@digest])")
    own = own_dockerfile(block_dir)
    if own is not None:
        if base_image is None and not build_args:
            # `blockkit run` builds with no options: reuse those of the last `blockkit build` of this folder.
            base_image, build_args, network = _last_options(client, block_dir, network)
        return _build_own_dockerfile(
            block_dir, own, manifest, client=client, base_image=base_image, wheelhouse=wheelhouse,
            force=force, build_args=dict(build_args or {}), network=network, build=build,
        )
    if build_args:
        raise BuildError(
            f"--build-arg applies to a block's own {BLOCK_DOCKERFILE}; {block_dir} is built from {DOCKERFILE_NAME}"
        )
    return _build_from_base(
        block_dir, manifest, client=client, base_image=base_image or DEFAULT_BASE_IMAGE,
        wheelhouse=wheelhouse, force=force, user=user, build=build,
    )


_IMAGE_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")


def _last_options(
    client: "docker.DockerClient", block_dir: Path, network: bool
) -> tuple[str | None, dict[str, str], bool]:
    """The --base-image/--build-arg/--network of the newest image built from this block folder."""
    try:
        images = client.images.list(filters={"label": f"{SOURCE_LABEL}={block_dir}"})
    except Exception:  # noqa: BLE001 - no listing: build with the Dockerfile as written
        return None, {}, network
    newest = sorted(images, key=lambda i: str(i.attrs.get("Created", "")), reverse=True)
    for image in newest:
        raw = (image.labels or {}).get(OPTIONS_LABEL)
        try:
            options = json.loads(raw) if raw else None
        except ValueError:
            options = None
        if isinstance(options, dict):
            return options.get("base_image"), dict(options.get("build_args") or {}), bool(options.get("network"))
    return None, {}, network


def own_dockerfile(block_dir: Path) -> Path | None:
    """The block's own Dockerfile, or None (none, or the blockkit template's)."""
    path = block_dir / BLOCK_DOCKERFILE
    if not path.is_file():
        return None
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:2000]
    except OSError as exc:
        raise BuildError(f"{path} cannot be read: {exc.strerror}") from None
    return None if TEMPLATE_MARKER in head else path


def _build_from_base(
    block_dir: Path,
    manifest: dict[str, Any],
    *,
    client: "docker.DockerClient",
    base_image: str,
    wheelhouse: Path | str | None,
    force: bool,
    user: str,
    build: bool = True,
) -> BuiltImage:
    base_id = _base_image_id(client, base_image)
    source_root = blockkit_source_root()
    dockerfile = find_dockerfile(source_root)
    wheel_dir = resolve_wheelhouse(wheelhouse, source_root)
    target = _base_target(client, base_image, base_id)
    with tempfile.TemporaryDirectory(prefix="blockkit-build-") as tmp, \
            wheels_.linked_wheels(wheel_dir, Path(tmp) / "wheels") as wheel_hashes:
        # The context links the wheelhouse's wheels; their sha256 come from its record (`linked_wheels`).
        context = Path(tmp)
        shutil.copytree(block_dir, context / "block", symlinks=True, ignore=ignore_for_copy)
        warnings = list(drop_dev_requirements(context / "block" / "requirements.txt"))
        # blockkit's own sources: hashed once, for its wheel and for the tag alike.
        source_hash = blockkit_source_hash(source_root)

        def tag_of(wheels_hash: str) -> tuple[str, str]:
            content_hash = block_content_hash(
                context / "block", base_image_id=base_id, dockerfile=dockerfile, source_root=source_root,
                extra=f"user:{user}\0wheels:{wheels_hash}", source_hash=source_hash,
            )
            return image_tag(manifest["name"], content_hash), content_hash

        def up_to_date(tag: str, content_hash: str, warnings: list[str]) -> BuiltImage | None:
            existing = _image_or_none(client, tag)
            if existing is None and build:
                return None
            image_id = str(existing.id) if existing is not None else ""
            return BuiltImage(tag, image_id, content_hash, False, DOCKERFILE_NAME, tuple(warnings))

        recorded = None if force else wheels_.recorded_wheels(
            wheel_dir, context / "block", source_root, target, source_hash=source_hash)
        if recorded is not None:
            # The usual case, an image built already: its tag from the recorded wheels, none linked.
            names, resolved = recorded
            tag, content_hash = tag_of(wheels_.named_wheels_hash(names, wheel_dir, wheel_hashes))
            found = up_to_date(tag, content_hash, warnings + resolved)
            if found is not None:
                return found
        warnings += fill_wheels(context / "wheels", wheel_dir, context / "block", source_root, target,
                                use_cache=not force, on_link=wheel_hashes.moved, source_hash=source_hash)
        tag, content_hash = tag_of(wheels_.wheels_hash(context / "wheels", wheel_dir, wheel_hashes))
        if not force or not build:
            found = up_to_date(tag, content_hash, warnings)
            if found is not None:
                return found
        shutil.copy2(dockerfile, context / "Dockerfile")
        _make_world_readable(context / "block")
        labels = {
            MANIFEST_LABEL: json.dumps(manifest, sort_keys=True),
            HASH_LABEL: content_hash,
            SOURCE_LABEL: str(block_dir),
            BLOCK_LABEL: str(manifest["name"]),
        }
        image_id = _docker_build(
            client, context, tag, {"BASE_IMAGE": base_image, "BLOCK_USER": USERS[user]}, labels, nocache=force
        )
    return BuiltImage(tag, image_id, content_hash, True, DOCKERFILE_NAME, tuple(warnings))


def prune_block_images(
    built: BuiltImage, block_dir: Path | str, client: "docker.DockerClient | None" = None
) -> tuple[list[str], list[str]]:
    """Remove the older images of a block folder (same repository and folder, other content).

    Another folder's block with the same manifest name shares the repository but not the
    folder label, so its images stay. Returns (removed tags, kept tags with the reason); an
    image a container still uses is kept.
    """
    import docker

    client = client or docker_client()
    repo = built.tag.rsplit(":", 1)[0]
    folder = str(Path(block_dir).resolve())
    removed: list[str] = []
    kept: list[str] = []
    for image in client.images.list(name=repo):
        if image.id == built.image_id or (image.labels or {}).get(SOURCE_LABEL) != folder:
            continue
        for tag in image.tags:
            if not tag.startswith(repo + ":"):
                continue
            try:
                client.images.remove(tag)
                removed.append(tag)
            except docker.errors.APIError as exc:
                kept.append(f"{tag} ({error_line(exc)})")
    return removed, kept


def read_manifest(block_dir: Path) -> dict[str, Any]:
    """Read and validate `UP42Manifest.json` of a block folder; return it as a dict."""
    path = block_dir / "UP42Manifest.json"
    if not block_dir.is_dir():
        raise ManifestError(f"{block_dir}: not a block folder (it does not exist)")
    if not path.is_file():
        raise ManifestError(f"{block_dir}: no UP42Manifest.json, so it is not a block folder")
    try:
        from blockkit.contract._manifest import load_manifest
    except ImportError:  # the validator is optional for building: fall back to plain JSON
        load_manifest = None  # type: ignore[assignment]
    if load_manifest is not None:
        manifest = dict(load_manifest(path).raw)  # raises ManifestError listing every problem
    else:
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ManifestError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("name"), str) or not manifest["name"]:
        raise ManifestError(f"{path}: the manifest needs a non-empty string 'name'")
    return manifest


def find_dockerfile(source_root: Path | None) -> Path:
    """Locate `Dockerfile.base`: the repository's, else the one shipped in the package, else the current folder's."""
    import blockkit

    packaged = Path(blockkit.__file__).resolve().parent / "docker"
    for folder in filter(None, (source_root, packaged, Path.cwd())):
        candidate = folder / DOCKERFILE_NAME
        if candidate.is_file():
            return candidate
    raise BuildError(f"{DOCKERFILE_NAME} not found in the blockkit sources, the installed package, nor {Path.cwd()}")


def _make_world_readable(root: Path) -> None:
    # The block runs as a non-root user: files copied from a private checkout must stay readable.
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, os.stat(dirpath).st_mode | 0o555)
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                os.chmod(path, path.stat().st_mode | 0o444)


def _image_or_none(client: "docker.DockerClient", ref: str) -> Any:
    import docker

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        raise DockerError(f"cannot inspect image {ref}: {exc}") from exc


def setup_command(image: str) -> str:
    """The command that makes base image `image` (.ci/docker-setup.sh names it blockkit-base:<suite>)."""
    suite = image.removeprefix("blockkit-base:")
    if suite == "bookworm":
        return "sudo bash .ci/docker-setup.sh"
    if suite == "bullseye":
        return "sudo BLOCKKIT_BASE_SUITE=bullseye bash .ci/docker-setup.sh"
    return f"sudo BLOCKKIT_BASE_IMAGE={shlex.quote(image)} bash .ci/docker-setup.sh (Debian bookworm)"


def _base_image_id(client: "docker.DockerClient", base_image: str) -> str:
    image = _image_or_none(client, base_image)
    if image is None:
        raise BaseImageMissingError(
            f"base image {base_image} does not exist (nothing can be pulled); create it with: {setup_command(base_image)}"
        )
    return str(image.id)


_TARGET_CACHE: dict[str, PythonTarget] = {}
_TARGET_FIELDS = {"python": re.compile(r"\d+\.\d+"), "machine": re.compile(r"[A-Za-z0-9_]+"),
                  "glibc": re.compile(r"\d+(\.\d+)*")}


def _target_record(image_id: str) -> Path:
    """Where the answer of an image's probe is kept: `<cache_root()>/base-images/<id>.json` (`~/.cache/blockkit`).

    An image id is the hash of the image's content, so the answer never goes stale.
    """
    from blockkit.runner._blockenv import cache_root

    return cache_root() / "base-images" / f"{image_id.replace(':', '-')}.json"


def _recorded_target(image_id: str) -> PythonTarget | None:
    """The probe's recorded answer, or None when there is none or it is not three plain values."""
    try:
        record = json.loads(_target_record(image_id).read_text(encoding="utf-8"))
        values = {name: record[name] for name in _TARGET_FIELDS}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(v, str) and _TARGET_FIELDS[k].fullmatch(v) for k, v in values.items()):
        return None
    return PythonTarget(**values)


def _record_target(image_id: str, target: PythonTarget) -> None:
    from blockkit.runner._lock import replace_atomic

    path = _target_record(image_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomic(path, json.dumps({"python": target.python, "machine": target.machine, "glibc": target.glibc}))
    except OSError:
        pass  # a read-only home: the image is probed again next time


def _base_target(client: "docker.DockerClient", base_image: str, image_id: str | None = None) -> PythonTarget:
    """Ask the base image which Python, machine and glibc it has (kept per image id).

    The probe is a container run (0.4 s); its answer is kept in memory and on disk, so a
    `blockkit run` whose images are built already starts no container before its steps.
    `image_id` is the base image's id when the caller has just inspected it.
    """
    image_id = image_id or _base_image_id(client, base_image)
    if image_id in _TARGET_CACHE:
        return _TARGET_CACHE[image_id]
    recorded = _recorded_target(image_id)
    if recorded is not None:
        _TARGET_CACHE[image_id] = recorded
        return recorded
    probe = (
        "import platform, sys; "
        "print('%d.%d' % sys.version_info[:2], platform.machine(), platform.libc_ver()[1] or '0')"
    )
    try:
        out = client.containers.run(
            image_id, ["python3", "-c", probe], remove=True, stdout=True, stderr=True, **no_network([], None)
        )
        python, machine, glibc = out.decode().split()
    except Exception as exc:  # noqa: BLE001 - any failure means the base image is unusable
        raise BuildError(f"base image {base_image} has no working python3 ({exc})") from exc
    target = PythonTarget(python=python, machine=machine, glibc=glibc)
    _TARGET_CACHE[image_id] = target
    _record_target(image_id, target)
    return target


def _docker_build(
    client: "docker.DockerClient",
    context: Path,
    tag: str,
    build_args: dict[str, str],
    labels: dict[str, str],
    *,
    nocache: bool,
    dockerfile: str = "Dockerfile",
    network_mode: str = "none",
) -> str:
    """Run `docker build` on the prepared context; return the image id or raise BuildError."""
    import docker

    log: list[str] = []
    image_id = ""
    try:
        stream = client.api.build(
            path=str(context),
            dockerfile=dockerfile,
            tag=tag,
            buildargs=build_args,
            labels=labels,
            rm=True,
            forcerm=True,
            pull=False,
            nocache=nocache,
            # Dockerfile.base needs nothing from outside: prove it. A block's own Dockerfile reaches
            # the local wheel server (and, when asked, the network) through the host's network.
            network_mode=network_mode,
            decode=True,
        )
        for chunk in stream:
            if "stream" in chunk:
                log.extend(line for line in str(chunk["stream"]).splitlines() if line.strip())
            if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                image_id = str(chunk["aux"]["ID"])
            if "error" in chunk:
                error = str(chunk["error"]).strip().splitlines()
                log.extend(error)
                raise BuildError(
                    f"building {tag} failed: {error[-1] if error else 'unknown error'}",
                    problems=[Problem("build", line) for line in log[-15:]],
                )
    except docker.errors.APIError as exc:
        raise BuildError(
            f"building {tag} failed: {exc.explanation or exc}",
            problems=[Problem("build", line) for line in log[-15:]],
        ) from exc
    if not image_id:
        image = _image_or_none(client, tag)
        if image is None:
            raise BuildError(f"building {tag} produced no image", problems=[Problem("build", l) for l in log[-15:]])
        image_id = str(image.id)
    return image_id


# --- a block's own Dockerfile (UP42 style) ------------------------------------------------------

_GENERATED_DOCKERFILE = ".blockkit.Dockerfile"
_FROM = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)
_ARG = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?\s*$", re.IGNORECASE)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
# Set after every FROM: pip inside the build installs from the host wheelhouse (served for the
# build only), never from an index. Reset at the end so pip in the finished image behaves as usual.
_PIP_OFFLINE = "ENV PIP_NO_INDEX=1 PIP_FIND_LINKS={url} PIP_DISABLE_PIP_VERSION_CHECK=1"
_PIP_RESET = "ENV PIP_NO_INDEX=0 PIP_FIND_LINKS="


@dataclass(frozen=True)
class _Stage:
    line: int  # 0-based line index of the FROM
    image: str  # as written
    resolved: str  # with build args substituted
    alias: str | None
    external: bool  # an image, not an earlier stage nor scratch


def _dockerfile_lines(text: str) -> list[str]:
    """The Dockerfile's lines with backslash continuations joined (comments dropped)."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if not pending and raw.lstrip().startswith("#"):
            lines.append(raw)
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    if pending:
        lines.append(pending)
    return lines


def dockerfile_stages(text: str, build_args: dict[str, str]) -> list[_Stage]:
    """The FROM lines of a Dockerfile, resolved with its global ARG defaults and the build args."""
    values: dict[str, str] = {}
    stages: list[_Stage] = []
    aliases: set[str] = set()
    for index, line in enumerate(_dockerfile_lines(text)):
        arg = _ARG.match(line)
        if arg and not stages:
            values[arg.group(1)] = build_args.get(arg.group(1), (arg.group(2) or "").strip("\"'"))
            continue
        match = _FROM.match(line)
        if match:
            image, alias = match.group(1), match.group(2)

            def sub(m: re.Match[str]) -> str:
                name = m.group(1) or m.group(3)
                return values.get(name) or (m.group(2) or "")

            resolved = _VAR.sub(sub, image)
            external = resolved.lower() != "scratch" and resolved not in aliases
            stages.append(_Stage(index, image, resolved, alias, external))
            if alias:
                aliases.add(alias)
    return stages


def dockerfile_command(text: str) -> tuple[list[str] | None, list[str] | None]:
    """(ENTRYPOINT, CMD) of the final stage of a Dockerfile, as argument lists (shell form via sh -c)."""
    entry: list[str] | None = None
    cmd: list[str] | None = None
    for line in _dockerfile_lines(text):
        word = line.strip().split(None, 1)
        if not word:
            continue
        key = word[0].upper()
        if key == "FROM":
            entry = cmd = None
        elif key in ("CMD", "ENTRYPOINT"):
            rest = word[1].strip() if len(word) > 1 else ""
            try:
                value = json.loads(rest) if rest.startswith("[") else None
            except ValueError:
                value = None
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                value = ["/bin/sh", "-c", rest]
            if key == "CMD":
                cmd = value
            else:
                entry = value
    return entry, cmd


def _build_own_dockerfile(
    block_dir: Path,
    dockerfile: Path,
    manifest: dict[str, Any],
    *,
    client: "docker.DockerClient",
    base_image: str | None,
    wheelhouse: Path | str | None,
    force: bool,
    build_args: dict[str, str],
    network: bool,
    build: bool = True,
) -> BuiltImage:
    """Build a block from its own Dockerfile, as UP42's Makefile did, pointing pip at the wheelhouse."""
    text = dockerfile.read_text(encoding="utf-8", errors="replace")
    # UP42's Makefile passed the manifest file's text; the label must hold the same JSON.
    args = {"manifest": json.dumps(manifest), **build_args}
    lines = _dockerfile_lines(text)
    stages = dockerfile_stages(text, args)
    if not stages:
        raise BuildError(f"{dockerfile}: no FROM line")
    externals = [s for s in stages if s.external]
    if base_image is not None and externals:
        last = externals[-1]
        alias = f" AS {last.alias}" if last.alias else ""
        lines[last.line] = f"FROM {base_image}{alias}"
        externals[-1] = _Stage(last.line, base_image, base_image, last.alias, True)
    base_ids = []
    for stage in externals:
        if "$" in stage.resolved or not stage.resolved:
            raise BuildError(f"{dockerfile}: FROM {stage.image} needs a build arg (--build-arg NAME=IMAGE)")
        if stage.resolved == base_image:  # the image --base-image names: a missing one says how it is made
            base_ids.append(_base_image_id(client, base_image))
            continue
        image = _image_or_none(client, stage.resolved)
        if image is None:
            raise BaseImageMissingError(
                f"{dockerfile}: FROM {stage.resolved} is not a local image (nothing is pulled)",
                hints=[f"build on a local image: blockkit build {shlex.quote(str(block_dir))} --base-image "
                       "blockkit-base:bullseye (or --build-arg NAME=IMAGE when its FROM uses an ARG)",
                       f"blockkit-base:bullseye (Python 3.9) is made by: {setup_command('blockkit-base:bullseye')}"])
        base_ids.append(str(image.id))
    final_base = externals[-1].resolved if externals else None

    source_root = blockkit_source_root()
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="blockkit-build-") as tmp, contextlib.ExitStack() as linked:
        context = Path(tmp) / "context"
        wheels = Path(tmp) / "wheels"
        wheels.mkdir()
        wheels_digest = "none"  # no requirements resolved: no wheels
        shutil.copytree(block_dir, context, symlinks=True, ignore=ignore_for_copy)
        requirements = context / "requirements.txt"
        warnings += drop_dev_requirements(requirements)
        if requirements.is_file() and final_base is not None:
            target = _python_target_or_none(client, final_base)
            if target is None:
                warnings.append(f"{final_base} has no python3: requirements.txt is left to the Dockerfile")
            else:
                wheel_dir = resolve_wheelhouse(wheelhouse, source_root)
                # The wheels are the wheelhouse's, linked: their sha256 come from its record.
                hashes = linked.enter_context(wheels_.linked_wheels(wheel_dir, wheels))
                pins = Path(tmp) / "constraints.txt"

                def resolve() -> list[str]:
                    assert target is not None and final_base is not None
                    found = resolve_wheels(
                        ["-r", str(requirements)], wheels, wheel_dir, target,
                        requirements=requirements, build_in_image=final_base, client=client, constraints=pins,
                    )
                    if not wheels_.host_matches(target):
                        complete_in_image(requirements, wheels, wheel_dir, target, final_base, client,
                                          constraints=pins)
                    return found

                # An unchanged block costs no pip run (and no container) on `blockkit run`.
                warnings += cached_resolution(
                    ["own", requirements.read_text(encoding="utf-8", errors="replace")], wheels, wheel_dir,
                    target, resolve, constraints=pins, use_cache=not force, on_link=hashes.moved,
                )
                wheels_digest = wheels_.wheels_hash(wheels, wheel_dir, hashes)
        generated = _offline_dockerfile(lines, "{url}")
        content_hash = own_content_hash(context, generated, args, base_ids, wheels_digest, network)
        tag = image_tag(manifest["name"], content_hash)
        if not force or not build:
            existing = _image_or_none(client, tag)
            if existing is not None or not build:
                image_id = str(existing.id) if existing is not None else ""
                return BuiltImage(tag, image_id, content_hash, False, BLOCK_DOCKERFILE, tuple(warnings))
        _make_world_readable(context)
        labels = {
            HASH_LABEL: content_hash, SOURCE_LABEL: str(block_dir), BLOCK_LABEL: str(manifest["name"]),
            OPTIONS_LABEL: json.dumps({"base_image": base_image, "build_args": build_args, "network": network}),
        }
        with WheelServer(wheels) as url:
            (context / _GENERATED_DOCKERFILE).write_text(_offline_dockerfile(lines, url), encoding="utf-8")
            # The wheel server is on the host's 127.0.0.1: a build with wheels (or --network) uses the
            # host's network; one without runs with none at all.
            serving = any(wheels.iterdir())
            image_id = _docker_build(
                client, context, tag, args, labels, nocache=force, dockerfile=_GENERATED_DOCKERFILE,
                network_mode="host" if (network or serving) else "none",
            )
    _check_manifest_label(client, tag, manifest, dockerfile)
    return BuiltImage(tag, image_id, content_hash, True, BLOCK_DOCKERFILE, tuple(warnings))


def _offline_dockerfile(lines: list[str], url: str) -> str:
    """The block's Dockerfile with pip pointed at the wheel server after each FROM, reset at the end."""
    out: list[str] = []
    for line in lines:
        out.append(line)
        if _FROM.match(line):
            out.append(_PIP_OFFLINE.format(url=url))
    out.append(_PIP_RESET)
    return "\n".join(out) + "\n"


def _python_target_or_none(client: "docker.DockerClient", image: str) -> PythonTarget | None:
    try:
        return _base_target(client, image)
    except BuildError:
        return None


def _check_manifest_label(client: "docker.DockerClient", tag: str, manifest: dict[str, Any], dockerfile: Path) -> None:
    """UP42 reads the manifest from the image's `up42_manifest` label: it must be there and match."""
    image = client.images.get(tag)
    label = (image.labels or {}).get(MANIFEST_LABEL)
    hint = f'add `ARG manifest` and `LABEL "{MANIFEST_LABEL}"=$manifest` to {dockerfile}'
    if label is None:
        client.images.remove(tag, force=True)
        raise BuildError(f"image built from {dockerfile} has no {MANIFEST_LABEL} label: {hint}")
    try:
        same = json.loads(label) == manifest
    except ValueError:
        same = False
    if not same:
        client.images.remove(tag, force=True)
        raise BuildError(f"the {MANIFEST_LABEL} label of the image built from {dockerfile} is not its UP42Manifest.json: {hint}")


__all__ = [
    "BaseImageMissingError",
    "DEV_TOOLS",
    "dockerfile_command",
    "drop_dev_requirements",
    "dockerfile_stages",
    "own_dockerfile",
    "resolve_wheels",
    "BuildError",
    "BuiltImage",
    "build_block_image",
    "block_content_hash",
    "read_manifest",
]
