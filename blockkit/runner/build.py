"""Build a block's image from `Dockerfile.base`, offline, tagged by a content hash.

Wheels (blockkit's and the block's requirements) are resolved on the host into
a wheelhouse and copied into the build context, so the image build itself never
touches the network and a second build works without one.
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

from blockkit.contract.errors import ManifestError, Problem
from blockkit.runner.docker_engine import DockerError, error_line, docker_client

if TYPE_CHECKING:
    import docker

DEFAULT_BASE_IMAGE = "blockkit-base:bookworm"
DOCKERFILE_NAME = "Dockerfile.base"
MANIFEST_LABEL = "up42_manifest"
HASH_LABEL = "blockkit.content_hash"
#: The block folder an image was built from (`--prune` only touches images of the same folder).
SOURCE_LABEL = "blockkit.block_dir"
# Bumped when the way images are built changes, so old tags are not reused.
_BUILD_FORMAT = "blockkit-build-1"
# Folders that never belong in an image nor in its hash (caches, run output).
_SKIP_DIRS = frozenset(
    {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".git", ".venv", ".blockkit", ".wheelhouse"}
)
_SKIP_SUFFIXES = (".pyc", ".pyo")
# Fixed timestamp for the blockkit wheel, so rebuilding unchanged sources gives identical bytes.
_SOURCE_DATE_EPOCH = "315532800"


class BaseImageMissingError(DockerError):
    """The base image to build on does not exist locally."""


class BuildError(DockerError):
    """`docker build` (or preparing its wheels) failed."""


@dataclass(frozen=True)
class BuiltImage:
    """A block image: its tag, image id, content hash, and whether this call built it."""

    tag: str
    image_id: str
    content_hash: str
    rebuilt: bool


@dataclass(frozen=True)
class _Target:
    """The Python inside the base image, which the wheels must fit."""

    python: str  # "3.11"
    machine: str  # "x86_64"
    glibc: str  # "2.36"


def build_block_image(
    block_dir: Path | str,
    *,
    base_image: str = DEFAULT_BASE_IMAGE,
    wheelhouse: Path | str | None = None,
    client: "docker.DockerClient | None" = None,
    force: bool = False,
) -> BuiltImage:
    """Build (or reuse) the image of a block folder and return its tag and id."""
    block_dir = Path(block_dir).resolve()
    manifest = read_manifest(block_dir)
    client = client or docker_client()
    base_id = _base_image_id(client, base_image)
    source_root = blockkit_source_root()
    dockerfile = find_dockerfile(source_root)

    content_hash = block_content_hash(block_dir, base_image_id=base_id, dockerfile=dockerfile, source_root=source_root)
    tag = f"blockkit/{_repo_name(manifest['name'])}:{content_hash[:12]}"
    if not force:
        existing = _image_or_none(client, tag)
        if existing is not None:
            return BuiltImage(tag=tag, image_id=existing.id, content_hash=content_hash, rebuilt=False)

    wheel_dir = resolve_wheelhouse(wheelhouse, source_root)
    target = _base_target(client, base_image)
    with tempfile.TemporaryDirectory(prefix="blockkit-build-") as tmp:
        context = Path(tmp)
        _fill_wheels(context / "wheels", wheel_dir, block_dir, source_root, target)
        shutil.copy2(dockerfile, context / "Dockerfile")
        shutil.copytree(block_dir, context / "block", symlinks=True, ignore=_ignore_for_copy)
        _make_world_readable(context / "block")
        labels = {
            MANIFEST_LABEL: json.dumps(manifest, sort_keys=True),
            HASH_LABEL: content_hash,
            SOURCE_LABEL: str(block_dir),
            "blockkit.block": str(manifest["name"]),
        }
        image_id = _docker_build(client, context, tag, base_image, labels, nocache=force)
    return BuiltImage(tag=tag, image_id=image_id, content_hash=content_hash, rebuilt=True)


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
        load_manifest = None
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
) -> str:
    """sha256 over the block's files, blockkit's source, Dockerfile.base and the base image id."""
    digest = hashlib.sha256()
    digest.update(f"{_BUILD_FORMAT}\0base:{base_image_id}\0".encode())
    digest.update(b"dockerfile\0" + dockerfile.read_bytes() + b"\0")
    digest.update(b"blockkit\0" + _blockkit_source_hash(source_root).encode() + b"\0")
    digest.update(b"block\0" + _tree_hash(block_dir).encode() + b"\0")
    return digest.hexdigest()


def _blockkit_source_hash(source_root: Path | None) -> str:
    import blockkit

    if source_root is None:
        # An installed blockkit: its version stands for its source.
        from importlib.metadata import version

        return "installed:" + version("blockkit")
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
    args = ["--only-binary=:all:", "--python-version", target.python, "--implementation", "cp", "--abi", f"cp{major}{minor}"]
    for platform_tag in platforms:
        args += ["--platform", platform_tag]
    return args


def _pip(args: list[str], what: str, env: dict[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        lines = [l for l in (proc.stdout + proc.stderr).splitlines() if l.strip()]
        tail = lines[-12:]
        last = next((l for l in reversed(tail) if "ERROR" in l), tail[-1] if tail else "no output")
        raise BuildError(
            f"{what} failed: {last.strip()}",
            problems=[Problem("pip", l) for l in tail],
        )


def _fill_wheels(dest: Path, wheel_dir: Path, block_dir: Path, source_root: Path | None, target: _Target) -> None:
    """Put every wheel the image needs under dest/deps and dest/blockkit, from the host wheelhouse."""
    with _locked(wheel_dir):
        blockkit_wheel = _blockkit_wheel(wheel_dir, source_root)
        requirements = block_dir / "requirements.txt"
        wanted = [str(blockkit_wheel)]
        if requirements.is_file():
            wanted += ["-r", str(requirements)]
        platform_args = _platform_args(target)
        subset = dest / "all"
        subset.mkdir(parents=True)
        offline = ["download", "--no-index", "--find-links", str(wheel_dir), "-d", str(subset), *platform_args, *wanted]
        try:
            # Everything may already be in the wheelhouse: then no network is needed at all.
            _pip(["--quiet", *offline], "resolving wheels offline")
        except BuildError:
            if platform_args:
                fill = ["download", "--find-links", str(wheel_dir), "-d", str(wheel_dir), *platform_args, *wanted]
            else:
                # Same Python as the image: pip wheel can also build wheels from sdists.
                fill = ["wheel", "--find-links", str(wheel_dir), "-w", str(wheel_dir), *wanted]
            _pip(["--quiet", *fill], f"fetching wheels into {wheel_dir}")
            _pip(["--quiet", *offline], "resolving wheels from the wheelhouse")
    (dest / "deps").mkdir()
    (dest / "blockkit").mkdir()
    for wheel in subset.iterdir():
        is_blockkit = wheel.name.split("-")[0].lower() == "blockkit"
        wheel.rename(dest / ("blockkit" if is_blockkit else "deps") / wheel.name)
    subset.rmdir()


def _blockkit_wheel(wheel_dir: Path, source_root: Path | None) -> Path:
    """The blockkit wheel for the current sources, built into the wheelhouse when they changed."""
    existing = sorted(wheel_dir.glob("blockkit-*.whl"))
    if source_root is None:
        # An installed blockkit: the wheel of the same version, from the wheelhouse or the index.
        from importlib.metadata import version

        wanted = f"blockkit-{version('blockkit')}-"
        matching = [w for w in existing if w.name.startswith(wanted)]
        if not matching:
            _pip(
                ["--quiet", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheel_dir),
                 f"blockkit=={version('blockkit')}"],
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
    built = sorted(wheel_dir.glob("blockkit-*.whl"))
    if not built:
        raise BuildError(f"building the blockkit wheel left no blockkit-*.whl in {wheel_dir}")
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
    base_image: str,
    labels: dict[str, str],
    *,
    nocache: bool,
) -> str:
    """Run `docker build` on the prepared context; return the image id or raise BuildError."""
    import docker

    log: list[str] = []
    image_id = ""
    try:
        stream = client.api.build(
            path=str(context),
            dockerfile="Dockerfile",
            tag=tag,
            buildargs={"BASE_IMAGE": base_image},
            labels=labels,
            rm=True,
            forcerm=True,
            pull=False,
            nocache=nocache,
            # The build needs nothing from outside: prove it.
            network_mode="none",
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


__all__ = [
    "BaseImageMissingError",
    "BuildError",
    "BuiltImage",
    "build_block_image",
    "block_content_hash",
    "read_manifest",
]
