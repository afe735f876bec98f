"""Content hashes of files and folders, cached by inode so unchanged files are read once."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_CHUNK = 1 << 20
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".git", ".mypy_cache"}


class HashCache:
    """sha256 of files keyed by (device, inode, size, mtime); persisted as JSON."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._entries: dict[str, str] = {}
        self._dirty = False
        if path and path.is_file():
            try:
                self._entries = json.loads(path.read_text())
            except (ValueError, OSError):
                self._entries = {}  # a broken cache only costs re-hashing

    def file_sha256(self, path: Path) -> str:
        """The sha256 of a file's bytes."""
        st = path.stat()
        key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        cached = self._entries.get(key)
        if cached:
            return cached
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        value = digest.hexdigest()
        self._entries[key] = value
        self._dirty = True
        return value

    def tree(self, root: Path, prefix: str = "") -> dict[str, str]:
        """sha256 of every regular file below root, by POSIX path relative to root (symlinks skipped)."""
        files: dict[str, Path] = {}
        if not root.is_dir():
            return {}
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.is_symlink() or not path.is_file():
                    continue
                files[f"{prefix}{path.relative_to(root).as_posix()}"] = path
        if len(files) < 2:
            return {rel: self.file_sha256(path) for rel, path in files.items()}
        # hashlib releases the GIL on large buffers: new files are hashed on every core.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(len(files), os.cpu_count() or 1, 8)) as pool:
            digests = pool.map(self.file_sha256, files.values())
            return dict(zip(files, digests))

    def save(self) -> None:
        """Write the cache back if it changed."""
        if self.path and self._dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._entries))
            os.replace(tmp, self.path)
            self._dirty = False


def digest_of(value: object) -> str:
    """sha256 of a JSON-serialisable value (sorted keys)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def source_hash(block_dir: Path, cache: HashCache) -> str:
    """A hash of a block folder's source (tests and caches excluded)."""
    files = {k: v for k, v in cache.tree(block_dir).items() if not k.startswith("tests/")}
    return digest_of(files)
