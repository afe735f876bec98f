"""The wheelhouse's digest record: an up-to-date check of a block image hashes no unchanged wheel twice."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from blockkit.runner._wheelhouse import WheelDigests, link_or_copy, wheels_hash


def _wheelhouse(tmp_path: Path) -> Path:
    house = tmp_path / "house"
    house.mkdir()
    for name, body in (("a-1.0-py3-none-any.whl", b"a" * 5000), ("b-2.0-py3-none-any.whl", b"b" * 7000)):
        (house / name).write_bytes(body)
    return house


def _context(tmp_path: Path, house: Path, name: str = "ctx") -> Path:
    folder = tmp_path / name / "deps"
    folder.mkdir(parents=True)
    for wheel in house.glob("*.whl"):
        link_or_copy(wheel, folder / wheel.name)
    return folder.parent


def _full(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        body = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(f"F\0{path.relative_to(root).as_posix()}\0{body}\0".encode())
    return digest.hexdigest()


def test_the_hash_equals_a_full_hash_of_the_same_tree_and_is_recorded(tmp_path: Path) -> None:
    house = _wheelhouse(tmp_path)
    ctx = _context(tmp_path, house)
    plain = _context(tmp_path, house, "plain")
    assert os.path.samefile(ctx / "deps" / "a-1.0-py3-none-any.whl", house / "a-1.0-py3-none-any.whl")
    first = wheels_hash(ctx, house)
    record = json.loads((house / ".digests.json").read_text())
    assert record["a-1.0-py3-none-any.whl"][1] == hashlib.sha256(b"a" * 5000).hexdigest()
    assert wheels_hash(ctx, house) == first == wheels_hash(plain, house)
    # The same value a full hash of every byte gives: image tags do not depend on the record.
    assert first == _full(ctx)


def test_a_wheel_replaced_under_its_name_is_hashed_again(tmp_path: Path) -> None:
    """blockkit's own wheel keeps its name when rebuilt from changed sources."""
    house = _wheelhouse(tmp_path)
    before = wheels_hash(_context(tmp_path, house, "one"), house)
    wheel = house / "a-1.0-py3-none-any.whl"
    replacement = house / "a.tmp"
    replacement.write_bytes(b"A" * 5000)  # same size
    os.utime(replacement, ns=(wheel.stat().st_atime_ns, wheel.stat().st_mtime_ns))  # same mtime
    os.replace(replacement, wheel)  # a new inode
    after = wheels_hash(_context(tmp_path, house, "two"), house)
    assert after != before


def test_a_doctored_record_or_a_copied_file_is_not_believed(tmp_path: Path) -> None:
    house = _wheelhouse(tmp_path)
    ctx = _context(tmp_path, house)
    honest = wheels_hash(ctx, house)
    record = json.loads((house / ".digests.json").read_text())
    # The record says other bytes for an identity that still matches: only a tampered record can.
    record["a-1.0-py3-none-any.whl"][1] = "0" * 64
    (house / ".digests.json").write_text(json.dumps(record))
    copied = tmp_path / "copied" / "deps"
    copied.mkdir(parents=True)
    for wheel in house.glob("*.whl"):
        copied.joinpath(wheel.name).write_bytes(wheel.read_bytes())  # not the wheelhouse's file
    assert wheels_hash(copied.parent, house) == honest
    for garbage in ("not json", "[]", '{"a-1.0-py3-none-any.whl": [1, 2, 3]}'):
        (house / ".digests.json").write_text(garbage)
        assert WheelDigests(house).tree(ctx) == honest


def test_a_read_only_wheelhouse_still_hashes(tmp_path: Path) -> None:
    house = _wheelhouse(tmp_path)
    ctx = _context(tmp_path, house)
    expected = wheels_hash(ctx, house)
    (house / ".digests.json").unlink()
    digests = WheelDigests(house)
    os.chmod(house, 0o555)
    try:
        assert digests.tree(ctx) == expected
        digests.save()  # cannot write: no error, no record
    finally:
        os.chmod(house, 0o755)
    assert not (house / ".digests.json").exists() or os.geteuid() == 0  # root may write anyway
