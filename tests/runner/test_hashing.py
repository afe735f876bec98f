"""File hashes for provenance and caching: correct, parallel, cached by inode, symlinks skipped."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from blockkit.runner.hashing import HashCache


def _tree(root: Path, count: int) -> dict[str, str]:
    expected = {}
    for i in range(count):
        rel = f"sub{i % 3}/f{i}.bin"
        data = os.urandom(1000 + i)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        expected[rel] = hashlib.sha256(data).hexdigest()
    return expected


def test_tree_hashes_every_file_and_skips_symlinks_and_caches(tmp_path: Path) -> None:
    root = tmp_path / "data"
    expected = _tree(root, 25)
    (root / "link.bin").symlink_to(root / "sub0" / "f0.bin")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.pyc").write_bytes(b"x")

    cache = HashCache(tmp_path / "hash-cache.json")
    assert cache.tree(root, prefix="up/") == {f"up/{k}": v for k, v in expected.items()}
    cache.save()

    # A new cache from the saved file knows the files; a changed file is hashed again.
    again = HashCache(tmp_path / "hash-cache.json")
    (root / "sub1" / "f1.bin").write_bytes(b"changed")
    result = again.tree(root)
    assert result["sub1/f1.bin"] == hashlib.sha256(b"changed").hexdigest()
    assert result["sub0/f0.bin"] == expected["sub0/f0.bin"]


def test_hard_links_share_one_hash_entry(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"same bytes")
    os.link(tmp_path / "a", tmp_path / "b")
    cache = HashCache(None)
    assert cache.tree(tmp_path) == {"a": hashlib.sha256(b"same bytes").hexdigest(), "b": hashlib.sha256(b"same bytes").hexdigest()}
    assert len(cache._entries) == 1  # noqa: SLF001 - the point: a forwarded (linked) file is not read again


def test_broken_cache_file_only_costs_rehashing(tmp_path: Path) -> None:
    (tmp_path / "cache.json").write_text("{not json")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_bytes(b"x")
    assert HashCache(tmp_path / "cache.json").tree(tmp_path / "d") == {"x": hashlib.sha256(b"x").hexdigest()}
