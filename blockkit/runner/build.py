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

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from blockkit.contract.errors import BaseImageMissingError, BuildError, ManifestError, Problem
from blockkit.runner.docker_client import DockerError, docker_client, error_line

if TYPE_CHECKING:
    import docker

DEFAULT_BASE_IMAGE = "blockkit-base:bookworm"
DOCKERFILE_NAME = "Dockerfile.base"
#: The distribution name on the package index (the import name and the command stay `blockkit`).
DIST_NAME = "blockkit-eo"
_WHEEL_GLOB = "blockkit_eo-*.whl"
#: A block's own Dockerfile (UP42 style); the template's carries TEMPLATE_MARKER and is not used by `build`.
BLOCK_DOCKERFILE = "Dockerfile"
TEMPLATE_MARKER = "blockkit-template-dockerfile"
#: `--user` choices for images built from Dockerfile.base: uid 1000, or root for platforms that
#: mount a root-owned output folder (UP42 ran blocks as their image's user, root for its bases).
USERS = {"1000": "1000:1000", "root": "0:0"}
#: Top-level requirements that are development tools: never installed into an image.
DEV_TOOLS = frozenset({
    "pytest", "pytest-cov", "pytest-mypy", "pytest-pylint", "pytest-mock", "pytest-xdist", "pytest-timeout",
    "mypy", "mypy-extensions", "black", "pylint", "flake8", "isort", "ruff", "coverage", "coverage-badge",
    "requests-mock", "tox", "pre-commit", "ipython", "jupyter", "types-requests",
})
MANIFEST_LABEL = "up42_manifest"
HASH_LABEL = "blockkit.content_hash"
#: The block folder an image was built from (`--prune` only touches images of the same folder).
SOURCE_LABEL = "blockkit.block_dir"
# Bumped when the way images are built changes, so old tags are not reused.
_BUILD_FORMAT = "blockkit-build-2"
# Folders that never belong in an image nor in its hash (caches, run output).
_SKIP_DIRS = frozenset(
    {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".git", ".venv", ".blockkit", ".wheelhouse"}
)
_SKIP_SUFFIXES = (".pyc", ".pyo")
# Fixed timestamp for the blockkit wheel, so rebuilding unchanged sources gives identical bytes.
_SOURCE_DATE_EPOCH = "315532800"


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


@dataclass(frozen=True)
class _Target:
    """The Python inside the base image, which the wheels must fit."""

    python: str  # "3.11"
    machine: str  # "x86_64"
    glibc: str  # "2.36"


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

    `build=False` only computes the tag (resolving the wheels, which the tag covers) and
    returns it with the existing image's id, or "" when there is none: nothing is built.

    `base_image`: the image to build on (Dockerfile.base), or the image replacing the last
    external `FROM` of a block's own Dockerfile (default: its own `FROM`). `build_args` go to
    a block's own Dockerfile (e.g. `BASE`). `user` ("1000" or "root") is the user of images
    built from Dockerfile.base. `network` lets a block's own Dockerfile reach the network
    while it builds (e.g. `apt-get`); pip is pointed at the wheelhouse either way.
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


OPTIONS_LABEL = "blockkit.build_options"
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
    target = _base_target(client, base_image)
    with tempfile.TemporaryDirectory(prefix="blockkit-build-") as tmp:
        context = Path(tmp)
        shutil.copytree(block_dir, context / "block", symlinks=True, ignore=_ignore_for_copy)
        warnings = list(drop_dev_requirements(context / "block" / "requirements.txt"))
        warnings += _fill_wheels(context / "wheels", wheel_dir, context / "block", source_root, target)
        content_hash = block_content_hash(
            context / "block", base_image_id=base_id, dockerfile=dockerfile, source_root=source_root,
            extra=f"user:{user}\0wheels:{_tree_hash(context / 'wheels')}",
        )
        tag = f"blockkit/{_repo_name(manifest['name'])}:{content_hash[:12]}"
        if not force or not build:
            existing = _image_or_none(client, tag)
            if existing is not None or not build:
                image_id = str(existing.id) if existing is not None else ""
                return BuiltImage(tag, image_id, content_hash, False, DOCKERFILE_NAME, tuple(warnings))
        shutil.copy2(dockerfile, context / "Dockerfile")
        _make_world_readable(context / "block")
        labels = {
            MANIFEST_LABEL: json.dumps(manifest, sort_keys=True),
            HASH_LABEL: content_hash,
            SOURCE_LABEL: str(block_dir),
            "blockkit.block": str(manifest["name"]),
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
        from blockkit.contract.manifest import load_manifest
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


def blockkit_source_root() -> Path | None:
    """The blockkit source tree (the folder with pyproject.toml), or None for an installed copy."""
    import blockkit

    root = Path(blockkit.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def find_dockerfile(source_root: Path | None) -> Path:
    """Locate `Dockerfile.base`: the repository's, else the one shipped in the package, else the current folder's."""
    import blockkit

    packaged = Path(blockkit.__file__).resolve().parent / "docker"
    for folder in filter(None, (source_root, packaged, Path.cwd())):
        candidate = folder / DOCKERFILE_NAME
        if candidate.is_file():
            return candidate
    raise BuildError(f"{DOCKERFILE_NAME} not found in the blockkit sources, the installed package, nor {Path.cwd()}")


def resolve_wheelhouse(wheelhouse: Path | str | None, source_root: Path | None) -> Path:
    """The host wheelhouse: the argument, else $BLOCKKIT_WHEELHOUSE, else `<repo or cwd>/.wheelhouse`."""
    if wheelhouse is None:
        env = os.environ.get("BLOCKKIT_WHEELHOUSE")
        wheelhouse = Path(env) if env else (source_root or Path.cwd()) / ".wheelhouse"
    path = Path(wheelhouse).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def block_content_hash(
    block_dir: Path,
    *,
    base_image_id: str,
    dockerfile: Path,
    source_root: Path | None,
    extra: str = "",
) -> str:
    """sha256 over the block's files, blockkit's source, Dockerfile.base, the base image id and `extra`.

    `extra` carries what else goes into the image (the wheels' hash, the user).
    """
    digest = hashlib.sha256()
    digest.update(f"{_BUILD_FORMAT}\0base:{base_image_id}\0".encode())
    digest.update(b"dockerfile\0" + dockerfile.read_bytes() + b"\0")
    digest.update(b"blockkit\0" + _blockkit_source_hash(source_root).encode() + b"\0")
    digest.update(b"block\0" + _tree_hash(block_dir).encode() + b"\0")
    digest.update(b"extra\0" + extra.encode() + b"\0")
    return digest.hexdigest()


def _blockkit_source_hash(source_root: Path | None) -> str:
    import blockkit

    if source_root is None:
        # An installed blockkit: its version stands for its source.
        from importlib.metadata import version

        return "installed:" + version(DIST_NAME)
    digest = hashlib.sha256()
    digest.update((source_root / "pyproject.toml").read_bytes())
    digest.update(_tree_hash(Path(blockkit.__file__).resolve().parent).encode())
    return digest.hexdigest()


def _walk(root: Path) -> Iterator[Path]:
    """Every file (or symlink) under root in a stable order, skipping caches."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            if not name.endswith(_SKIP_SUFFIXES):
                yield Path(dirpath) / name


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in _walk(root):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            digest.update(f"L\0{rel}\0{os.readlink(path)}\0".encode())
            continue
        executable = "x" if os.access(path, os.X_OK) else "-"
        digest.update(f"F\0{rel}\0{executable}\0".encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def _ignore_for_copy(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n in _SKIP_DIRS or n.endswith(_SKIP_SUFFIXES) or n.endswith(".egg-info")}


def _make_world_readable(root: Path) -> None:
    # The block runs as a non-root user: files copied from a private checkout must stay readable.
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, os.stat(dirpath).st_mode | 0o555)
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                os.chmod(path, path.stat().st_mode | 0o444)


def _repo_name(name: str) -> str:
    """A manifest name as a valid Docker repository component."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return re.sub(r"[._-]{2,}", "-", cleaned) or "block"


def _image_or_none(client: "docker.DockerClient", ref: str) -> Any:
    import docker

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        raise DockerError(f"cannot inspect image {ref}: {exc}") from exc


def _base_image_id(client: "docker.DockerClient", base_image: str) -> str:
    image = _image_or_none(client, base_image)
    if image is None:
        raise BaseImageMissingError(
            f"base image {base_image} does not exist (nothing can be pulled); "
            "create it with: sudo bash .ci/docker-setup.sh"
        )
    return str(image.id)


_TARGET_CACHE: dict[str, _Target] = {}


def _base_target(client: "docker.DockerClient", base_image: str) -> _Target:
    """Ask the base image which Python, machine and glibc it has (cached per image id)."""
    image_id = _base_image_id(client, base_image)
    if image_id in _TARGET_CACHE:
        return _TARGET_CACHE[image_id]
    probe = (
        "import platform, sys; "
        "print('%d.%d' % sys.version_info[:2], platform.machine(), platform.libc_ver()[1] or '0')"
    )
    try:
        out = client.containers.run(
            image_id, ["python3", "-c", probe], remove=True, network_mode="none", stdout=True, stderr=True
        )
        python, machine, glibc = out.decode().split()
    except Exception as exc:  # noqa: BLE001 - any failure means the base image is unusable
        raise BuildError(f"base image {base_image} has no working python3 ({exc})") from exc
    target = _Target(python=python, machine=machine, glibc=glibc)
    _TARGET_CACHE[image_id] = target
    return target


def _host_matches(target: _Target) -> bool:
    import platform

    return f"{sys.version_info[0]}.{sys.version_info[1]}" == target.python and platform.machine() == target.machine


def _platform_args(target: _Target) -> list[str]:
    """pip options selecting wheels for the image's Python, not the host's."""
    if _host_matches(target):
        return []
    major, minor = target.python.split(".")
    # pip does not expand a manylinux_2_N platform to the older glibc versions it covers: list them.
    glibc_major, _, glibc_minor = target.glibc.partition(".")
    platforms = [f"manylinux_{glibc_major}_{n}_{target.machine}" for n in range(int(glibc_minor or 0), 4, -1)]
    platforms += [f"manylinux{legacy}_{target.machine}" for legacy in ("2014", "2010", "1")]
    # Wheels compiled in the base image itself (`_compile_in_image`) carry the plain linux tag.
    platforms.append(f"linux_{target.machine}")
    args = ["--only-binary=:all:", "--python-version", target.python, "--implementation", "cp", "--abi", f"cp{major}{minor}"]
    for platform_tag in platforms:
        args += ["--platform", platform_tag]
    return args


def _pip(args: list[str], what: str, env: dict[str, str] | None = None) -> str:
    """Run pip with this Python; return its output, or raise BuildError with pip's last error line."""
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        lines = [l for l in (proc.stdout + proc.stderr).splitlines() if l.strip() and not l.startswith("WARNING: Location")]
        tail = lines[-12:]
        last = next((l for l in reversed(tail) if "ERROR" in l), tail[-1] if tail else "no output")
        raise BuildError(
            f"{what} failed: {last.strip()}",
            problems=[Problem("pip", l) for l in tail],
        )
    return proc.stdout + proc.stderr


def drop_dev_requirements(requirements: Path) -> list[str]:
    """Comment out development tools (DEV_TOOLS) in a copied requirements.txt; say which."""
    if not requirements.is_file():
        return []
    kept: list[str] = []
    dropped: list[str] = []
    for line in requirements.read_text(encoding="utf-8", errors="replace").splitlines():
        name = re.split(r"[\s\[<>=!~;@]", line.strip(), maxsplit=1)[0]
        if name and not name.startswith(("-", "#")) and _canonical(name) in DEV_TOOLS:
            dropped.append(name)
            kept.append(f"# left out of the image by blockkit build (a development tool): {line}")
        else:
            kept.append(line)
    if not dropped:
        return []
    requirements.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return [f"requirements.txt: development tools left out of the image: {', '.join(dropped)}"]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# pip -vv names every link it skips, with the release's Requires-Python.
_SKIPPED = re.compile(r"(\S+\.(?:whl|tar\.gz|zip))(?:#\S*)? \(from [^)]*\) \(requires-python:([^)]*)\)")
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")


def _python_limited(output: str, requirements: Path | None, python: str) -> dict[str, tuple[str, str]]:
    """{project: (newest release skipped for its Requires-Python, that spec)} for top-level requirements (pip -vv)."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename
    from packaging.version import Version

    top = _top_level(requirements)
    newest: dict[str, tuple[Version, str]] = {}
    for match in _SKIPPED.finditer(output):
        try:
            if SpecifierSet(match.group(2)).contains(python, prereleases=True):
                continue  # skipped for another reason (platform tags)
        except InvalidSpecifier:
            continue
        filename = match.group(1).rsplit("/", 1)[-1]
        try:
            if filename.endswith(".whl"):
                name, version, *_ = parse_wheel_filename(filename)
            else:
                name, version = parse_sdist_filename(filename)
        except (InvalidWheelFilename, InvalidSdistFilename, ValueError):
            continue
        if name in top and (name not in newest or version > newest[name][0]):
            newest[name] = (version, match.group(2))
    return {name: (str(version), spec) for name, (version, spec) in newest.items()}


def _top_level(requirements: Path | None) -> set[str]:
    """The project names a requirements file asks for (canonical), without comments and options."""
    top = set()
    if requirements is not None and requirements.is_file():
        for line in requirements.read_text(encoding="utf-8", errors="replace").splitlines():
            name = re.split(r"[\s\[<>=!~;@]", line.strip(), maxsplit=1)[0]
            if name and not name.startswith(("-", "#")):
                top.add(_canonical(name))
    return top


def _limit_warnings(
    limited: dict[str, tuple[str, str]], subset: Path, python: str, requirements: Path | None
) -> list[str]:
    """A line per requirement resolved to an older release than the newest because of Requires-Python."""
    from packaging.utils import parse_wheel_filename
    from packaging.version import Version

    asked = _top_level(requirements)
    limited = {name: value for name, value in limited.items() if name in asked}

    resolved: dict[str, Any] = {}
    for wheel in subset.glob("*.whl"):
        wheel_name, version, *_ = parse_wheel_filename(wheel.name)
        resolved[str(wheel_name)] = version
    lines = []
    for name, (newest, spec) in sorted(limited.items()):
        got = resolved.get(name)
        if got is not None and got < Version(newest):
            lines.append(
                f"{name} resolves to {got}, far older than {newest}: newer releases need Python {spec} "
                f"and the target is Python {python} (pin the release you mean, or use a base image or interpreter with that Python)"
            )
    return lines


def resolve_wheels(
    wanted: list[str],
    subset: Path,
    wheel_dir: Path,
    target: _Target,
    *,
    requirements: Path | None = None,
    build_in_image: str | None = None,
    client: "docker.DockerClient | None" = None,
) -> list[str]:
    """Resolve `wanted` (pip arguments) for the target Python into `subset`, filling the wheelhouse.

    Everything comes from the wheelhouse when it can; otherwise from the index. A requirement
    that has no wheel for the target is built from its sdist: on the host when it is pure
    Python, else inside `build_in_image` (the base image, which then needs a compiler).
    Returns warning lines (requirements resolved far older than asked because of Requires-Python).
    """
    platform_args = _platform_args(target)
    subset.mkdir(parents=True, exist_ok=True)
    offline = ["download", "--no-index", "--find-links", str(wheel_dir), "-d", str(subset), *platform_args, *wanted]
    limited: dict[str, tuple[str, str]] = {}
    with _locked(wheel_dir):
        record = wheel_dir / f".requires-python-{target.python}.json"
        try:
            limited = json.loads(record.read_text()) if record.is_file() else {}
        except ValueError:
            limited = {}
        try:
            # Everything may already be in the wheelhouse: then no network is needed at all.
            _pip(["--quiet", *offline], "resolving wheels offline")
        except BuildError:
            built_from_source: set[str] = set()
            while True:
                if platform_args:
                    fill = ["download", "-vv", "--find-links", str(wheel_dir), "-d", str(wheel_dir), *platform_args, *wanted]
                else:
                    # Same Python as the image: pip wheel can also build wheels from sdists.
                    fill = ["wheel", "-vv", "--find-links", str(wheel_dir), "-w", str(wheel_dir), *wanted]
                try:
                    output = _pip(fill, f"fetching wheels into {wheel_dir}")
                    limited.update(_python_limited(output, requirements, target.python))
                    break
                except BuildError as err:
                    missing = next((m.group(1) for p in err.problems for m in [_NO_MATCH.search(p.message)] if m), None)
                    if not platform_args or missing is None or missing in built_from_source:
                        raise
                    built_from_source.add(missing)
                    _wheel_from_sdist(missing, wheel_dir, target, build_in_image, client)
            record.write_text(json.dumps(limited, indent=1))
            _pip(["--quiet", *offline], "resolving wheels from the wheelhouse")
    return _limit_warnings(limited, subset, target.python, requirements)


def _wheel_from_sdist(
    requirement: str, wheel_dir: Path, target: _Target, image: str | None, client: "docker.DockerClient | None"
) -> None:
    """Build a wheel for the target Python from a requirement's sdist into the wheelhouse."""
    with tempfile.TemporaryDirectory(prefix="blockkit-sdist-") as tmp:
        work = Path(tmp)
        _pip(["--quiet", "download", "--no-deps", "--no-binary=:all:", "-d", str(work / "src"), requirement],
             f"fetching the source of {requirement}")
        sdist = next((work / "src").iterdir())
        try:
            _pip(["--quiet", "wheel", "--no-deps", "-w", str(work / "out"), str(sdist)], f"building {sdist.name}")
            wheel = next((work / "out").glob("*.whl"))
        except (BuildError, StopIteration):
            wheel = None
        if wheel is not None and wheel.name.endswith("-none-any.whl"):
            shutil.move(str(wheel), wheel_dir / wheel.name)
            return
        if image is None or client is None:
            raise BuildError(
                f"{requirement} has no wheel for Python {target.python} and needs compiling: "
                f"put a wheel for it into {wheel_dir}"
            )
        _compile_in_image(sdist, wheel_dir, image, client, requirement, target)


def _compile_in_image(
    sdist: Path, wheel_dir: Path, image: str, client: "docker.DockerClient", requirement: str, target: _Target
) -> None:
    """Compile an sdist into a wheel inside the base image (offline; it must have a compiler)."""
    from docker.types import Mount

    out = Path(tempfile.mkdtemp(prefix="blockkit-wheel-"))
    try:
        script = (
            f"set -e; cp /src/{sdist.name} /tmp/ && cd /tmp && "
            f"python3 -m pip wheel --no-deps --no-build-isolation --no-index -w /tmp/out /tmp/{sdist.name} >/tmp/log 2>&1 "
            "|| { tail -n 5 /tmp/log; exit 1; }; cp /tmp/out/*.whl /out/ && chmod a+rw /out/*.whl"
        )
        container = client.containers.run(
            image, ["sh", "-c", script], detach=True, network_mode="none", user="0:0",
            mounts=[Mount(f"/src/{sdist.name}", str(sdist), type="bind", read_only=True),
                    Mount("/out", str(out), type="bind", read_only=False)],
        )
        try:
            status = container.wait(timeout=900)
            log = container.logs().decode(errors="replace").strip().splitlines()
        finally:
            container.remove(force=True)
        wheels = list(out.glob("*.whl"))
        if status.get("StatusCode") != 0 or not wheels:
            raise BuildError(
                f"{requirement} has no wheel for Python {target.python}, and compiling it in {image} failed"
                f"{': ' + log[-1] if log else ''} (does the image have a compiler?); put a wheel into {wheel_dir}",
                problems=[Problem("compile", line) for line in log[-5:]],
            )
        for wheel in wheels:
            shutil.move(str(wheel), wheel_dir / wheel.name)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _fill_wheels(dest: Path, wheel_dir: Path, block_dir: Path, source_root: Path | None, target: _Target) -> list[str]:
    """Put every wheel the image needs under dest/deps and dest/blockkit, from the host wheelhouse."""
    with _locked(wheel_dir):
        blockkit_wheel = _blockkit_wheel(wheel_dir, source_root)
    requirements = block_dir / "requirements.txt"
    wanted = [str(blockkit_wheel)]
    if requirements.is_file():
        wanted += ["-r", str(requirements)]
    subset = dest / "all"
    warnings = resolve_wheels(wanted, subset, wheel_dir, target, requirements=requirements)
    (dest / "deps").mkdir()
    (dest / "blockkit").mkdir()
    for wheel in subset.iterdir():
        is_blockkit = wheel.name.startswith(_WHEEL_GLOB.split("*")[0])
        wheel.rename(dest / ("blockkit" if is_blockkit else "deps") / wheel.name)
    subset.rmdir()
    return warnings


def _blockkit_wheel(wheel_dir: Path, source_root: Path | None) -> Path:
    """The blockkit wheel for the current sources, built into the wheelhouse when they changed."""
    existing = sorted(wheel_dir.glob(_WHEEL_GLOB))
    if source_root is None:
        # An installed blockkit: the wheel of the same version, from the wheelhouse or the index.
        from importlib.metadata import version

        wanted = _WHEEL_GLOB.replace("*.whl", "") + version(DIST_NAME) + "-"
        matching = [w for w in existing if w.name.startswith(wanted)]
        if not matching:
            _pip(
                ["--quiet", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheel_dir),
                 f"{DIST_NAME}=={version(DIST_NAME)}"],
                f"fetching the blockkit wheel into {wheel_dir} (or put one there)",
            )
            matching = sorted(wheel_dir.glob(f"{wanted}*.whl"))
        if matching:
            return matching[-1]
        raise BuildError(f"no {wanted}*.whl in {wheel_dir}: put the blockkit wheel there")
    marker = wheel_dir / ".blockkit-source-hash"
    source_hash = _blockkit_source_hash(source_root)
    if existing and marker.is_file() and marker.read_text().strip() == source_hash:
        return existing[-1]
    for old in existing:
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="blockkit-src-") as tmp:
        # A clean copy: setuptools' in-tree build/ folder would keep deleted modules in the wheel.
        src = Path(tmp)
        for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in"):
            if (source_root / name).is_file():
                shutil.copy2(source_root / name, src / name)
        shutil.copytree(source_root / "blockkit", src / "blockkit", ignore=_ignore_for_copy)
        build = ["--quiet", "wheel", "--no-deps", "-w", str(wheel_dir), str(src)]
        env = {"SOURCE_DATE_EPOCH": _SOURCE_DATE_EPOCH}
        try:
            # Without build isolation first: it works offline when the host has a recent setuptools.
            _pip([*build, "--no-build-isolation"], "building the blockkit wheel", env=env)
        except BuildError:
            # An isolated build fetches setuptools itself (needs the package index).
            _pip(build, "building the blockkit wheel", env=env)
    built = sorted(wheel_dir.glob(_WHEEL_GLOB))
    if not built:
        raise BuildError(f"building the blockkit wheel left no {_WHEEL_GLOB} in {wheel_dir}")
    marker.write_text(source_hash + "\n")
    return built[-1]


class _locked:
    """An exclusive lock on the wheelhouse, so parallel builds do not race on it."""

    def __init__(self, folder: Path) -> None:
        self._path = folder / ".lock"
        self._handle: Any = None

    def __enter__(self) -> None:
        self._handle = self._path.open("w")
        fcntl.flock(self._handle, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


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
        image = _image_or_none(client, stage.resolved)
        if image is None:
            raise BaseImageMissingError(
                f"{dockerfile}: FROM {stage.resolved} does not exist locally (nothing is pulled); "
                "build on a local image with --base-image IMAGE (or --build-arg NAME=IMAGE when its FROM uses an ARG), "
                "e.g. blockkit-base:bullseye made by .ci/docker-setup.sh"
            )
        base_ids.append(str(image.id))
    final_base = externals[-1].resolved if externals else None

    source_root = blockkit_source_root()
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="blockkit-build-") as tmp:
        context = Path(tmp) / "context"
        wheels = Path(tmp) / "wheels"
        wheels.mkdir()
        shutil.copytree(block_dir, context, symlinks=True, ignore=_ignore_for_copy)
        requirements = context / "requirements.txt"
        warnings += drop_dev_requirements(requirements)
        if requirements.is_file() and final_base is not None:
            target = _python_target_or_none(client, final_base)
            if target is None:
                warnings.append(f"{final_base} has no python3: requirements.txt is left to the Dockerfile")
            else:
                wheel_dir = resolve_wheelhouse(wheelhouse, source_root)
                warnings += resolve_wheels(
                    ["-r", str(requirements)], wheels, wheel_dir, target,
                    requirements=requirements, build_in_image=final_base, client=client,
                )
                if not _host_matches(target):
                    _complete_in_image(requirements, wheels, wheel_dir, target, final_base, client)
        generated = _offline_dockerfile(lines, "{url}")
        content_hash = _own_content_hash(context, generated, args, base_ids, wheels, network)
        tag = f"blockkit/{_repo_name(manifest['name'])}:{content_hash[:12]}"
        if not force or not build:
            existing = _image_or_none(client, tag)
            if existing is not None or not build:
                image_id = str(existing.id) if existing is not None else ""
                return BuiltImage(tag, image_id, content_hash, False, BLOCK_DOCKERFILE, tuple(warnings))
        _make_world_readable(context)
        labels = {
            HASH_LABEL: content_hash, SOURCE_LABEL: str(block_dir), "blockkit.block": str(manifest["name"]),
            OPTIONS_LABEL: json.dumps({"base_image": base_image, "build_args": build_args, "network": network}),
        }
        with _WheelServer(wheels) as url:
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


def _complete_in_image(
    requirements: Path, subset: Path, wheel_dir: Path, target: _Target, image: str, client: "docker.DockerClient"
) -> None:
    """Let the image's own pip pick the wheels, fetching what the host's pip missed.

    The host's pip evaluates environment markers (`python_version < "3.10"`) for the host's
    Python even when asked for another one, so a resolution for the image can lack a wheel.
    The image's pip resolves against the wheelhouse (served on 127.0.0.1); each requirement it
    cannot find is fetched for the image's Python into the wheelhouse, until it resolves.
    """
    from docker.types import Mount

    fetched: set[str] = set()
    for _attempt in range(40):
        out = Path(tempfile.mkdtemp(prefix="blockkit-resolve-"))
        try:
            with _WheelServer(wheel_dir) as url:
                script = (
                    f"python3 -m pip download --disable-pip-version-check --no-index --find-links {url} "
                    "-d /tmp/w -r /req/requirements.txt >/tmp/log 2>&1; code=$?; "
                    "cat /tmp/log; cp /tmp/w/* /out/ 2>/dev/null; chmod -R a+rw /out; exit $code"
                )
                container = client.containers.run(
                    image, ["sh", "-c", script], detach=True, network_mode="host", user="0:0",
                    mounts=[Mount("/req/requirements.txt", str(requirements), type="bind", read_only=True),
                            Mount("/out", str(out), type="bind", read_only=False)],
                )
                try:
                    status = container.wait(timeout=900)
                    log = container.logs().decode(errors="replace")
                finally:
                    container.remove(force=True)
            if status.get("StatusCode") == 0:
                for old in subset.iterdir():
                    old.unlink()
                for wheel in out.iterdir():
                    shutil.move(str(wheel), subset / wheel.name)
                return
        finally:
            shutil.rmtree(out, ignore_errors=True)
        match = _NO_MATCH.search(log)
        if match is None:
            lines = [l for l in log.splitlines() if l.strip()]
            raise BuildError(
                f"resolving requirements.txt inside {image} failed: {lines[-1] if lines else 'no output'}",
                problems=[Problem("pip", line) for line in lines[-8:]],
            )
        wanted = log[match.start(1):].splitlines()[0].split(";")[0].strip()
        if wanted in fetched:
            raise BuildError(f"{wanted} is needed in {image} (Python {target.python}) and cannot be fetched for it")
        fetched.add(wanted)
        with _locked(wheel_dir):
            try:
                _pip(["--quiet", "download", "--find-links", str(wheel_dir), "-d", str(wheel_dir),
                      *_platform_args(target), wanted], f"fetching {wanted} for Python {target.python}")
            except BuildError as err:
                if not any(_NO_MATCH.search(p.message) for p in err.problems):
                    raise
                _wheel_from_sdist(wanted, wheel_dir, target, image, client)
    raise BuildError(f"resolving requirements.txt inside {image} did not settle after 40 rounds")


def _offline_dockerfile(lines: list[str], url: str) -> str:
    """The block's Dockerfile with pip pointed at the wheel server after each FROM, reset at the end."""
    out: list[str] = []
    for line in lines:
        out.append(line)
        if _FROM.match(line):
            out.append(_PIP_OFFLINE.format(url=url))
    out.append(_PIP_RESET)
    return "\n".join(out) + "\n"


def _own_content_hash(
    context: Path, generated: str, args: dict[str, str], base_ids: list[str], wheels: Path, network: bool
) -> str:
    digest = hashlib.sha256()
    digest.update(f"{_BUILD_FORMAT}\0own-dockerfile\0network:{network}\0".encode())
    digest.update(b"bases\0" + "\0".join(base_ids).encode() + b"\0")
    digest.update(b"dockerfile\0" + generated.encode() + b"\0")
    digest.update(b"args\0" + json.dumps(args, sort_keys=True).encode() + b"\0")
    digest.update(b"block\0" + _tree_hash(context).encode() + b"\0")
    digest.update(b"wheels\0" + _tree_hash(wheels).encode() + b"\0")
    return digest.hexdigest()


def _python_target_or_none(client: "docker.DockerClient", image: str) -> _Target | None:
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


class _WheelServer:
    """Serves a folder of wheels on 127.0.0.1 for one build (pip's --find-links reads the listing)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._server: Any = None
        self._thread: Any = None

    def __enter__(self) -> str:
        import functools
        import threading
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

        handler = functools.partial(Quiet, directory=str(self.folder))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="blockkit-wheels", daemon=True)
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


__all__ = [
    "BaseImageMissingError",
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
