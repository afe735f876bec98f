"""The wheelhouse's digest record (a `HashCache` file): an up-to-date image check hashes no unchanged wheel twice."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import pytest

from blockkit.runner import _hashing
from blockkit.runner._hashing import HashCache, signature
from blockkit.runner._wheelhouse import (
    DIGESTS,
    cached_resolution,
    link_or_copy,
    linked_wheels,
    wheel_hashes,
    wheels_hash,
)

NAMES = {"a-1.0-py3-none-any.whl": b"a" * 5000, "b-2.0-py3-none-any.whl": b"b" * 7000}


def _wheelhouse(tmp_path: Path) -> Path:
    house = tmp_path / "house"
    house.mkdir()
    for name, body in NAMES.items():
        (house / name).write_bytes(body)
    return house


def _link(house: Path, folder: Path, hashes: HashCache | None = None) -> Path:
    """A build context's wheel folder linking the wheelhouse's wheels (as `fill_wheels` does)."""
    (folder / "deps").mkdir(parents=True)
    for wheel in sorted(house.glob("*.whl")):
        link_or_copy(wheel, folder / "deps" / wheel.name, hashes.moved if hashes is not None else None)
    return folder


def _full(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        body = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(f"F\0{path.relative_to(root).as_posix()}\0{body}\0".encode())
    return digest.hexdigest()


def _build_check(house: Path, context: Path) -> str:
    """What `_build_from_base` does with the wheels of one block: link, hash, remove, save the record."""
    with linked_wheels(house, context / "wheels") as hashes:
        _link(house, context / "wheels", hashes)
        return wheels_hash(context / "wheels", house, hashes)


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the files whose bytes are read (`_hashing.hash_fd`)."""
    calls: list[int] = []
    real = _hashing.hash_fd

    def counting(fd: int, deadline: float | None = None) -> str:
        calls.append(fd)
        return real(fd, deadline)

    monkeypatch.setattr(_hashing, "hash_fd", counting)
    return calls


def test_the_hash_equals_a_full_hash_and_the_record_is_a_hash_cache(tmp_path: Path) -> None:
    house = _wheelhouse(tmp_path)
    first = _build_check(house, tmp_path / "one")
    record = json.loads((house / DIGESTS).read_text())
    for name, body in NAMES.items():
        st = os.stat(house / name)
        assert record[f"{st.st_dev}:{st.st_ino}"] == [*signature(st), hashlib.sha256(body).hexdigest()]
    assert len(record) == len(NAMES)  # the build context's files are the wheelhouse's: no other entry
    # A context of copies and a plain full hash of every byte give the same value: tags do not depend on the record.
    copies = tmp_path / "copies" / "deps"
    copies.mkdir(parents=True)
    for name, body in NAMES.items():
        (copies / name).write_bytes(body)
    assert wheels_hash(copies.parent, house) == first == _full(copies.parent)
    assert json.loads((house / DIGESTS).read_text()) == record  # copies are hashed, never recorded


def test_an_up_to_date_check_reads_no_wheel(tmp_path: Path, hashed: list[int]) -> None:
    """Linking, and removing the links with the build context, move the wheels' ctime: the record follows."""
    house = _wheelhouse(tmp_path)
    first = _build_check(house, tmp_path / "one")
    assert len(hashed) == len(NAMES)
    hashed.clear()
    for run in range(3):  # each as a new `blockkit run` (the record read from disk)
        assert _build_check(house, tmp_path / f"again{run}") == first
        assert not list((tmp_path / f"again{run}" / "wheels").rglob("*.whl"))  # the links went with the check
    assert hashed == []
    # The wheelhouse files' state is the one recorded: another process believes it too.
    record = json.loads((house / DIGESTS).read_text())
    for name in NAMES:
        st = os.stat(house / name)
        assert record[f"{st.st_dev}:{st.st_ino}"][:4] == signature(st)


def test_a_recorded_resolution_links_with_the_hook(tmp_path: Path, hashed: list[int]) -> None:
    """`cached_resolution` (what `fill_wheels` uses) passes `on_link` to every link it makes."""
    from blockkit.runner._wheelhouse import PythonTarget

    house = _wheelhouse(tmp_path)
    target = PythonTarget("3.11", "x86_64", "2.36")

    def resolve(subset: Path) -> list[str]:
        subset.mkdir(parents=True, exist_ok=True)
        for name, body in NAMES.items():
            (subset / name).write_bytes(body)  # as pip download: copies
        return []

    first = tmp_path / "first" / "wheels"
    cached_resolution(["base"], first, house, target, lambda: resolve(first))
    value = wheels_hash(first.parent, house)
    hashed.clear()
    for run in range(2):
        context = tmp_path / f"ctx{run}" / "wheels"
        with linked_wheels(house, context) as hashes:
            cached_resolution(["base"], context, house, target, lambda: pytest.fail("resolved again"),
                              on_link=hashes.moved)
            assert all(os.path.samefile(context / n, house / n) for n in NAMES)
            assert wheels_hash(context.parent, house, hashes) == value
    assert len(hashed) == len(NAMES)  # the first linked check records, the second reads nothing


def test_a_wheel_replaced_under_its_name_is_hashed_again(tmp_path: Path) -> None:
    """blockkit's own wheel keeps its name when rebuilt from changed sources."""
    house = _wheelhouse(tmp_path)
    before = _build_check(house, tmp_path / "one")
    wheel = house / "a-1.0-py3-none-any.whl"
    replacement = house / "a.tmp"
    replacement.write_bytes(b"A" * 5000)  # same size
    os.utime(replacement, ns=(wheel.stat().st_atime_ns, wheel.stat().st_mtime_ns))  # same mtime
    os.replace(replacement, wheel)  # a new inode
    after = _build_check(house, tmp_path / "two")
    assert after != before
    assert after == wheels_hash(_copies(tmp_path / "three", house), house)


def test_a_wheel_rewritten_in_place_with_its_mtime_restored_is_hashed_again(tmp_path: Path) -> None:
    house = _wheelhouse(tmp_path)
    before = _build_check(house, tmp_path / "one")
    wheel = house / "b-2.0-py3-none-any.whl"
    st = wheel.stat()
    wheel.write_bytes(b"B" * 7000)  # same inode, same size
    os.utime(wheel, ns=(st.st_atime_ns, st.st_mtime_ns))  # only the ctime tells
    assert _build_check(house, tmp_path / "two") != before


def _copies(folder: Path, house: Path) -> Path:
    (folder / "deps").mkdir(parents=True)
    for wheel in house.glob("*.whl"):
        (folder / "deps" / wheel.name).write_bytes(wheel.read_bytes())
    return folder


def test_a_doctored_or_garbage_record_and_a_copied_file_are_not_believed(tmp_path: Path) -> None:
    house = _wheelhouse(tmp_path)
    honest = _build_check(house, tmp_path / "one")
    record = json.loads((house / DIGESTS).read_text())
    # Other bytes for a state that still matches: only a tampered record can say that, and a
    # file that is not the wheelhouse's (a copy) is hashed whatever the record says.
    (house / DIGESTS).write_text(json.dumps({k: [*v[:4], "0" * 64] for k, v in record.items()}))
    assert wheels_hash(_copies(tmp_path / "copied", house), house) == honest
    garbages: list[Callable[[str, list[int]], str]] = [
        lambda key, sig: "not json", lambda key, sig: "[]", lambda key, sig: "{}",
        lambda key, sig: '{"a-1.0-py3-none-any.whl": [1, 2, 3]}',
        lambda key, sig: json.dumps({key: [*sig, "not a sha256"]}),
        lambda key, sig: json.dumps({key: [*map(str, sig), "0" * 64]}),
        lambda key, sig: json.dumps({key: [*sig, "Z" * 64]}),
        lambda key, sig: json.dumps({key: [*sig[:3], 1.5, "0" * 64]}),
        lambda key, sig: json.dumps({key: [*sig, "0" * 64, "extra"]}),
    ]
    for n, garbage in enumerate(garbages):
        ctx = _link(house, tmp_path / f"garbage{n}")
        # The state the file has now, after the link: an entry for it would be believed if well formed.
        a = os.stat(ctx / "deps" / "a-1.0-py3-none-any.whl")
        key, sig = f"{a.st_dev}:{a.st_ino}", signature(a)
        (house / DIGESTS).write_text(garbage(key, sig))
        assert wheels_hash(ctx, house, wheel_hashes(house)) == honest, garbage(key, sig)
    # The same entries well formed are believed: the garbage above was refused for its form, not its state.
    (house / DIGESTS).write_text(json.dumps({key: [*sig, "0" * 64]}))
    assert wheels_hash(ctx, house, wheel_hashes(house)) != honest


def test_a_read_only_wheelhouse_still_hashes(tmp_path: Path) -> None:
    house = _wheelhouse(tmp_path)
    expected = _build_check(house, tmp_path / "one")
    (house / DIGESTS).unlink()
    os.chmod(house, 0o555)
    try:
        assert _build_check(house, tmp_path / "two") == expected  # cannot save: no error
    finally:
        os.chmod(house, 0o755)
    assert not (house / DIGESTS).exists() or os.geteuid() == 0  # root may write anyway


def test_a_symlink_planted_at_the_record_is_neither_believed_nor_written_through(tmp_path: Path) -> None:
    house = _wheelhouse(tmp_path)
    honest = _build_check(house, tmp_path / "one")
    record = json.loads((house / DIGESTS).read_text())
    victim = tmp_path / "victim.json"
    # A doctored record elsewhere, planted by a symlink: a wheelhouse's record is only its own file.
    victim.write_text(json.dumps({k: [*v[:4], "0" * 64] for k, v in record.items()}))
    before = victim.read_bytes()
    (house / DIGESTS).unlink()
    (house / DIGESTS).symlink_to(victim)
    assert _build_check(house, tmp_path / "two") == honest
    assert victim.read_bytes() == before
    assert not (house / DIGESTS).is_symlink()  # replaced by the record, the symlink's target untouched
    assert len(json.loads((house / DIGESTS).read_text())) == len(NAMES)


def test_a_symlink_at_the_records_lock_or_a_fifo_at_the_record_does_no_harm(tmp_path: Path) -> None:
    house = _wheelhouse(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    lock = (house / DIGESTS).with_suffix(".lock")
    lock.symlink_to(victim)
    honest = _build_check(house, tmp_path / "one")  # the record cannot be locked: not saved, no error
    assert victim.read_text() == "keep" and not (house / DIGESTS).exists()
    lock.unlink()
    os.mkfifo(house / DIGESTS)  # reading it must not hang
    assert _build_check(house, tmp_path / "two") == honest


WRITER = r"""
import sys
from pathlib import Path
from blockkit.runner._wheelhouse import wheel_hashes, save_wheel_hashes
house, names = Path(sys.argv[1]), sys.argv[2:]
for name in names:  # one save per file: many merges under the lock
    hashes = wheel_hashes(house)
    hashes.file_sha256(house / name)
    save_wheel_hashes(hashes)
"""


def test_concurrent_saves_lose_no_entry_and_leave_valid_json(tmp_path: Path) -> None:
    house = tmp_path / "house"
    house.mkdir()
    names = [f"w{i:03d}-1.0-py3-none-any.whl" for i in range(48)]
    for i, name in enumerate(names):
        (house / name).write_bytes(os.urandom(2000 + i))
    # Two processes and two threads, each recording its own quarter of the wheels.
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(house), *names[i::4]]) for i in (0, 1)]

    def thread_writer(part: list[str]) -> None:
        for name in part:
            hashes = wheel_hashes(house)
            hashes.file_sha256(house / name)
            hashes.save()

    threads = [threading.Thread(target=thread_writer, args=(names[i::4],)) for i in (2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [proc.wait(timeout=120) for proc in procs] == [0, 0]
    record = json.loads((house / DIGESTS).read_text())
    for name in names:
        st = os.stat(house / name)
        assert record[f"{st.st_dev}:{st.st_ino}"] == [*signature(st), hashlib.sha256((house / name).read_bytes()).hexdigest()]
    assert not [p for p in house.iterdir() if p.name.endswith(".tmp")]  # no temp file left behind


@pytest.mark.docker
@pytest.mark.slow
def test_checking_an_up_to_date_block_image_reads_no_wheel(docker_client, base_image, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, hashed: list[int]) -> None:
    """`build_block_image(build=False)` as every `blockkit run` does: the second check reads no wheel's bytes."""
    from blockkit.runner import _image_names
    from blockkit.runner._build import blockkit_source_root, build_block_image, resolve_wheelhouse
    from tests.runner.test_build import make_block

    real = _image_names.blockkit_source_hash
    memo: dict[object, str] = {}
    monkeypatch.setattr(_image_names, "blockkit_source_hash", lambda root: memo.setdefault(root, real(root)))
    block = make_block(tmp_path)
    (block / "requirements.txt").write_text("affine\n")
    house = resolve_wheelhouse(None, blockkit_source_root())
    first = build_block_image(block, base_image=base_image, client=docker_client, build=False)
    build_block_image(block, base_image=base_image, client=docker_client, build=False)  # links: records
    hashed.clear()
    again = build_block_image(block, base_image=base_image, client=docker_client, build=False)
    assert again.tag == first.tag
    assert hashed == []
    # The record holds the wheelhouse files as they are now (linked, moved and unlinked by the checks).
    record = json.loads((house / DIGESTS).read_text())
    blockkit_wheel = next(house.glob("blockkit_eo-*.whl"))
    st = os.stat(blockkit_wheel)
    assert record[f"{st.st_dev}:{st.st_ino}"][:4] == signature(st)


@pytest.mark.docker
@pytest.mark.slow
def test_checking_an_up_to_date_own_dockerfile_image_reads_no_wheel(docker_client, base_image, tmp_path: Path,
                                                                   hashed: list[int],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A block with its own Dockerfile and requirements: its wheels' sha256 come from the record too."""
    from blockkit.runner._build import BLOCK_DOCKERFILE, build_block_image
    from tests.runner.test_build import make_block

    opened: list[str] = []  # wheels read through Path.open (a tree hash of the wheel folder)
    real_open = Path.open

    def counting_open(self: Path, mode: str = "r", *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if self.suffix == ".whl" and "r" in mode:
            opened.append(self.name)
        return real_open(self, mode, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", counting_open)

    block = make_block(tmp_path)
    (block / "requirements.txt").write_text("affine\n")
    (block / "Dockerfile").write_text(f"FROM {base_image}\nARG manifest\nLABEL \"up42_manifest\"=$manifest\n"
                                      "COPY requirements.txt /block/\nRUN pip install -r /block/requirements.txt\n")
    first = build_block_image(block, base_image=base_image, client=docker_client, build=False)
    assert first.dockerfile == BLOCK_DOCKERFILE
    build_block_image(block, base_image=base_image, client=docker_client, build=False)  # links: records
    hashed.clear()
    opened.clear()
    again = build_block_image(block, base_image=base_image, client=docker_client, build=False)
    assert again.tag == first.tag
    assert hashed == [] and opened == []
    # Another requirement is another image: the record does not stand for the wheels' names.
    (block / "requirements.txt").write_text("affine\nclick\n")
    assert build_block_image(block, base_image=base_image, client=docker_client, build=False).tag != first.tag


def _installed_house(tmp_path: Path) -> tuple[Path, "object", Path]:
    """A wheelhouse with an (installed-version) blockkit wheel and two deps, a block folder, a target."""
    from importlib.metadata import version

    from blockkit.runner._wheelhouse import DIST_NAME, PythonTarget

    house = _wheelhouse(tmp_path)
    (house / f"blockkit_eo-{version(DIST_NAME)}-py3-none-any.whl").write_bytes(b"k" * 3000)
    block = tmp_path / "block"
    block.mkdir()
    (block / "requirements.txt").write_text("a\nb\n")
    return house, PythonTarget("3.11", "x86_64", "2.36"), block


def _fill(house: Path, block: Path, target, dest: Path, hashes: HashCache | None = None) -> list[str]:
    """`fill_wheels` for an installed blockkit; a resolution picks every wheel of the house (as pip would)."""
    from blockkit.runner import _wheelhouse

    def resolve(wanted, subset, wheel_dir, target, requirements=None):
        subset.mkdir(parents=True, exist_ok=True)
        for wheel in wheel_dir.glob("*.whl"):
            (subset / wheel.name).write_bytes(wheel.read_bytes())
        return []

    real = _wheelhouse.resolve_wheels
    _wheelhouse.resolve_wheels = resolve
    try:
        return _wheelhouse.fill_wheels(dest, house, block, None, target,
                                       on_link=hashes.moved if hashes is not None else None)
    finally:
        _wheelhouse.resolve_wheels = real


def test_the_recorded_wheels_hash_equals_the_linked_contexts(tmp_path: Path, hashed: list[int]) -> None:
    """An up-to-date check hashes the recorded wheels without linking them: the same value, no record written."""
    from blockkit.runner._wheelhouse import named_wheels_hash, recorded_wheels

    house, target, block = _installed_house(tmp_path)
    assert recorded_wheels(house, block, None, target) is None  # nothing resolved yet
    _fill(house, block, target, tmp_path / "first" / "wheels")
    linked = wheels_hash(tmp_path / "first" / "wheels", house)
    assert sorted(p.relative_to(tmp_path / "first" / "wheels").as_posix()
                  for p in (tmp_path / "first" / "wheels").rglob("*.whl"))[0].startswith("blockkit/")
    names, warnings = recorded_wheels(house, block, None, target)
    assert sorted(names) == sorted(p.name for p in house.glob("*.whl")) and warnings == []
    hashes = wheel_hashes(house)
    assert named_wheels_hash(names, house, hashes) == linked == _full(tmp_path / "first" / "wheels")
    hashes.save()
    record = (house / DIGESTS).read_bytes()
    hashed.clear()
    for run in range(2):  # as new runs: nothing read, nothing linked, the record untouched
        hashes = wheel_hashes(house)
        assert named_wheels_hash(names, house, hashes) == linked
        hashes.save()
    assert hashed == [] and (house / DIGESTS).read_bytes() == record


def test_a_wheel_replaced_under_its_name_changes_the_recorded_wheels_hash(tmp_path: Path) -> None:
    from blockkit.runner._wheelhouse import named_wheels_hash, recorded_wheels

    house, target, block = _installed_house(tmp_path)
    _fill(house, block, target, tmp_path / "first" / "wheels")
    names, _ = recorded_wheels(house, block, None, target)
    before = named_wheels_hash(names, house, wheel_hashes(house))
    (house / "a-1.0-py3-none-any.whl").write_bytes(b"A" * 5000)  # same name and size, other bytes
    after = named_wheels_hash(names, house, wheel_hashes(house))
    assert after != before
    _fill(house, block, target, tmp_path / "second" / "wheels")
    assert after == wheels_hash(tmp_path / "second" / "wheels", house)


@pytest.mark.parametrize("damage", ["broken", "missing wheel", "wheel path", "duplicate"])
def test_a_doubtful_resolution_record_is_no_shortcut(tmp_path: Path, damage: str) -> None:
    """No record, a broken one, a wheel gone or a name with a folder in it: the check links and resolves as before."""
    from blockkit.runner._wheelhouse import recorded_wheels

    house, target, block = _installed_house(tmp_path)
    _fill(house, block, target, tmp_path / "first" / "wheels")
    (entry,) = (house / ".resolved").glob("*.json")
    record = json.loads(entry.read_text())
    if damage == "broken":
        entry.write_text("{not json")
    elif damage == "missing wheel":
        record["wheels"].append("gone-1.0-py3-none-any.whl")
        entry.write_text(json.dumps(record))
    elif damage == "wheel path":
        record["wheels"].append("../../etc/passwd")
        entry.write_text(json.dumps(record))
    else:
        record["wheels"].append(record["wheels"][0])
        entry.write_text(json.dumps(record))
    assert recorded_wheels(house, block, None, target) is None
