"""File hashes for provenance and caching: correct, parallel, cached by inode, symlinks skipped."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from blockkit.runner._hashing import HashCache


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


def test_an_edit_that_restores_size_and_mtime_is_still_seen(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"ORIGINAL")
    cache = HashCache(None)
    assert cache.file_sha256(path) == hashlib.sha256(b"ORIGINAL").hexdigest()
    st = path.stat()
    path.write_bytes(b"POISONED")  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back; the ctime still moved
    assert cache.file_sha256(path) == hashlib.sha256(b"POISONED").hexdigest()


def test_concurrent_saves_keep_every_entry(tmp_path: Path) -> None:
    """Several processes saving one cache file: no fixed temp name to fight over, nothing lost."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from blockkit.runner._hashing import HashCache\n"
        "root = Path(sys.argv[1]); me = sys.argv[2]\n"
        "for i in range(20):\n"
        "    f = root / f'{me}-{i}'; f.write_bytes(f'{me} {i}'.encode())\n"
        "    c = HashCache(root.parent / 'hash-cache.json'); c.file_sha256(f); c.save()\n"
    )
    root = tmp_path / "files"
    root.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root), f"p{n}"]) for n in range(4)]
    assert [p.wait() for p in procs] == [0] * 4
    final = HashCache(tmp_path / "hash-cache.json")
    for f in root.iterdir():
        assert final.known(f.stat()) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert not list(tmp_path.glob("*.tmp"))


def test_an_image_content_hash_covers_where_a_folder_link_points(tmp_path: Path) -> None:
    """A block's build context keeps symlinks as links: re-pointing one to a folder is another image."""
    from blockkit.runner._image_names import tree_hash

    root = tmp_path / "block"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "x.txt").write_text("same")
    (root / "data").symlink_to("a")
    first = tree_hash(root)
    assert tree_hash(root) == first
    (root / "data").unlink()
    (root / "data").symlink_to("b")
    assert tree_hash(root) != first
