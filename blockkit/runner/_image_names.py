"""Block image names and identity: the repository from the manifest name, the tag from a content hash, labels.

A block's image is `blockkit/<repo_name(manifest name)>:<first 12 hex of its content hash>`; the hash
covers everything that goes into the image (the block's files, blockkit's source, the Dockerfile, the
base image, the wheels), so an unchanged block finds its image and a changed one gets a new tag.
Pure functions of files and strings: no Docker here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterator

#: The distribution name on the package index (the import name and the command stay `blockkit`).
DIST_NAME = "blockkit-eo"
MANIFEST_LABEL = "up42_manifest"
HASH_LABEL = "blockkit.content_hash"
#: The block folder an image was built from (`--prune` only touches images of the same folder).
SOURCE_LABEL = "blockkit.block_dir"
OPTIONS_LABEL = "blockkit.build_options"
# Bumped when the way images are built changes, so old tags are not reused.
_BUILD_FORMAT = "blockkit-build-2"
# Folders that never belong in an image nor in its hash (caches, run output).
_SKIP_DIRS = frozenset(
    {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".git", ".venv", ".blockkit", ".wheelhouse"}
)
_SKIP_SUFFIXES = (".pyc", ".pyo")


def blockkit_source_root() -> Path | None:
    """The blockkit source tree (the folder with pyproject.toml), or None for an installed copy."""
    import blockkit

    root = Path(blockkit.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def block_content_hash(
    block_dir: Path,
    *,
    base_image_id: str,
    dockerfile: Path,
    source_root: Path | None,
    extra: str = "",
    source_hash: str | None = None,
) -> str:
    """sha256 over the block's files, blockkit's source, Dockerfile.base, the base image id and `extra`.

    Args:
        block_dir: the block folder as it goes into the image (caches skipped).
        base_image_id: the id of the image built on.
        dockerfile: the Dockerfile built with (Dockerfile.base).
        source_root: blockkit's source tree, or None for an installed blockkit (its version counts then).
        extra: what else goes into the image (the wheels' hash, the user).
        source_hash: `blockkit_source_hash(source_root)`, when the caller has it already.
    """
    digest = hashlib.sha256()
    digest.update(f"{_BUILD_FORMAT}\0base:{base_image_id}\0".encode())
    digest.update(b"dockerfile\0" + dockerfile.read_bytes() + b"\0")
    digest.update(b"blockkit\0" + (source_hash or blockkit_source_hash(source_root)).encode() + b"\0")
    digest.update(b"block\0" + tree_hash(block_dir).encode() + b"\0")
    digest.update(b"extra\0" + extra.encode() + b"\0")
    return digest.hexdigest()


def own_content_hash(
    context: Path, generated: str, args: dict[str, str], base_ids: list[str], wheels: str, network: bool
) -> str:
    """The content hash of an image built from a block's own Dockerfile.

    Args:
        context: the build context (the block folder's copy).
        generated: the Dockerfile actually built (pip pointed at the wheel server).
        args: the build args (`manifest` included).
        base_ids: the image ids of the Dockerfile's external FROM images.
        wheels: the hash of the wheels served to the build (`_wheelhouse.wheels_hash`), "none" without.
        network: whether the build may reach the network.
    """
    digest = hashlib.sha256()
    digest.update(f"{_BUILD_FORMAT}\0own-dockerfile\0network:{network}\0".encode())
    digest.update(b"bases\0" + "\0".join(base_ids).encode() + b"\0")
    digest.update(b"dockerfile\0" + generated.encode() + b"\0")
    digest.update(b"args\0" + json.dumps(args, sort_keys=True).encode() + b"\0")
    digest.update(b"block\0" + tree_hash(context).encode() + b"\0")
    digest.update(b"wheels\0" + wheels.encode() + b"\0")
    return digest.hexdigest()


def blockkit_source_hash(source_root: Path | None) -> str:
    """What stands for blockkit's own code in an image: a hash of its sources, or the installed version."""
    import blockkit

    if source_root is None:
        # An installed blockkit: its version stands for its source.
        from importlib.metadata import version

        return "installed:" + version(DIST_NAME)
    digest = hashlib.sha256()
    digest.update((source_root / "pyproject.toml").read_bytes())
    digest.update(tree_hash(Path(blockkit.__file__).resolve().parent).encode())
    return digest.hexdigest()


def _walk(root: Path) -> Iterator[tuple[str, str]]:
    """(path, path relative to root with "/") of every file or symlink under root in a stable order, skipping caches.

    A symlink to a folder is an entry of its own (its target is hashed), not a folder to walk:
    an image holds the link, so pointing it elsewhere is another image. Plain strings, not Path
    objects: the runner hashes blockkit's own sources this way before every run from a source
    checkout.
    """
    base = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        linked = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        rel_dir = os.path.relpath(dirpath, base)
        prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        for name in sorted(filenames + linked):
            if not name.endswith(_SKIP_SUFFIXES):
                yield os.path.join(dirpath, name), prefix + name


def tree_hash(root: Path) -> str:
    """sha256 over the names, modes, link targets and bytes of the files under root (caches skipped)."""
    digest = hashlib.sha256()
    for path, rel in _walk(root):
        if os.path.islink(path):
            digest.update(f"L\0{rel}\0{os.readlink(path)}\0".encode())
            continue
        executable = "x" if os.access(path, os.X_OK) else "-"
        digest.update(f"F\0{rel}\0{executable}\0".encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def ignore_for_copy(folder: str, names: list[str]) -> set[str]:
    """For shutil.copytree: the caches that never go into an image."""
    return {n for n in names if n in _SKIP_DIRS or n.endswith(_SKIP_SUFFIXES) or n.endswith(".egg-info")}


def canonical_name(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503): `PyYAML`, `pyyaml` and `py_yaml` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def repo_name(name: str) -> str:
    """A manifest name as a valid Docker repository component."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return re.sub(r"[._-]{2,}", "-", cleaned) or "block"


#: The block's name as a label (what `docker images --filter label=blockkit.block=...` finds).
BLOCK_LABEL = "blockkit.block"


def image_tag(manifest_name: str, content_hash: str) -> str:
    """The tag of a block image: `blockkit/<repository>:<first 12 hex of the content hash>`."""
    return f"blockkit/{repo_name(manifest_name)}:{content_hash[:12]}"
