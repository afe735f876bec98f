"""Keystore: hybrid encryption at rest, tamper detection, file modes, sharing, redaction."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from blockkit.contract.errors import BlockkitError
from blockkit.storage._errors import (
    InsecureKeyFile,
    KeyNotFound,
    KeystoreError,
    TamperedEntry,
    WrongKeyType,
    WrongPassphrase,
)
from blockkit.storage._keystore import Keystore, S3KeyConfig, WebDavKeyConfig
from blockkit.storage._redact import Redactor, redact

SECRET = "s3cr3t/Value+with=chars"
S3 = S3KeyConfig(access_key="AKIDEXAMPLE", secret_key=SECRET, endpoint="http://127.0.0.1:9000", region="eu-1")
DAV = WebDavKeyConfig(endpoint="https://dav.example/remote.php", username="ann.user-7", password="p@ss w0rd")


@pytest.fixture
def store(tmp_path: Path) -> Keystore:
    return Keystore(tmp_path / "ks", passphrase="correct horse")


def test_roundtrip_and_types(store: Keystore) -> None:
    store.add("prod", S3)
    store.add("drive", DAV)
    assert store.get("prod").config == S3
    assert store.get("drive", "webdav").config == DAV
    with pytest.raises(WrongKeyType, match="is a webdav key; an s3 key is needed"):
        store.get("drive", "s3")


def test_nothing_secret_on_disk_or_in_list(store: Keystore) -> None:
    store.add("prod", S3)
    store.add("drive", DAV)
    blob = b"".join(p.read_bytes() for p in store.path.rglob("*") if p.is_file())
    # Values no base64 or hex text can contain by chance ("ann" did, once in ~100 runs).
    for s in (SECRET, "AKIDEXAMPLE", "p@ss w0rd", "ann.user-7"):
        assert s.encode() not in blob
    listed = [i.to_dict() for i in store.list()]
    assert listed == [
        {"name": "drive", "type": "webdav", "endpoint": "https://dav.example/remote.php"},
        {"name": "prod", "type": "s3", "endpoint": "http://127.0.0.1:9000"},
    ]
    assert SECRET not in repr(store.get("prod"))


def test_missing_key_message(store: Keystore) -> None:
    with pytest.raises(KeyNotFound) as info:
        store.get("nope")
    assert info.value.headline() == "[WRONG_INPUT_ERROR] no key named 'nope'; see `blockkit keys list`"
    assert isinstance(info.value, BlockkitError)


def test_wrong_passphrase(store: Keystore) -> None:
    store.add("prod", S3)
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        Keystore(store.path, passphrase="wrong").get("prod")
    with pytest.raises(WrongPassphrase, match="BLOCKKIT_KEYSTORE_PASSPHRASE"):
        Keystore(store.path).get("prod")


def test_private_key_encrypted_with_passphrase(store: Keystore) -> None:
    store.add("prod", S3)
    pem = (store.path / "private_key.pem").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE((store.path / "private_key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o700
    assert stat.S_IMODE((store.path / "entries" / "prod.json").stat().st_mode) == 0o600


def test_unencrypted_private_key_needs_mode_0600(tmp_path: Path) -> None:
    ks = Keystore(tmp_path / "ks")
    ks.add("prod", S3)
    pem = ks.path / "private_key.pem"
    assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    os.chmod(pem, 0o644)
    with pytest.raises(InsecureKeyFile) as info:
        Keystore(ks.path).get("prod")
    assert "chmod 600" in info.value.message and "\n" not in info.value.message
    os.chmod(pem, 0o600)
    assert Keystore(ks.path).get("prod").config == S3


def _mutate(path: Path, field: str) -> None:
    record = json.loads(path.read_text())
    raw = bytearray(base64.b64decode(record[field]))
    raw[len(raw) // 2] ^= 0x01
    record[field] = base64.b64encode(bytes(raw)).decode()
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "wrapped_key"])
def test_tampered_entry_rejected(store: Keystore, field: str) -> None:
    store.add("prod", S3)
    _mutate(store.path / "entries" / "prod.json", field)
    with pytest.raises(TamperedEntry):
        Keystore(store.path, passphrase="correct horse").get("prod")


def test_edited_header_rejected(store: Keystore) -> None:
    store.add("prod", S3)
    p = store.path / "entries" / "prod.json"
    record = json.loads(p.read_text())
    record["type"] = "webdav"
    p.write_text(json.dumps(record))
    with pytest.raises(TamperedEntry, match="authentication failed"):
        store.get("prod")
    record["type"], record["endpoint"] = "s3", "http://evil.example"
    p.write_text(json.dumps(record))
    with pytest.raises(TamperedEntry):
        store.get("prod")


def test_swapped_entries_rejected(store: Keystore) -> None:
    store.add("a", S3)
    store.add("b", S3KeyConfig("other", "othersecret"))
    a, b = store.path / "entries" / "a.json", store.path / "entries" / "b.json"
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    a.write_text(json.dumps(rb))
    with pytest.raises(TamperedEntry, match="swapped"):
        store.get("a")
    # even with the visible name rewritten, GCM's associated data catches it
    rb["name"] = "a"
    a.write_text(json.dumps(rb))
    with pytest.raises(TamperedEntry, match="authentication failed"):
        store.get("a")
    assert ra != rb


def test_big_config_beyond_rsa_block_size(store: Keystore) -> None:
    big = S3KeyConfig("AK", "x" * 20_000, endpoint="http://127.0.0.1:1")
    store.add("big", big)
    assert store.get("big").config.secret_key == "x" * 20_000


def test_duplicate_remove_and_names(store: Keystore) -> None:
    store.add("prod", S3)
    with pytest.raises(KeystoreError, match="exists"):
        store.add("prod", S3)
    store.add("prod", DAV, overwrite=True)
    assert store.get("prod").type == "webdav"
    store.remove("prod")
    assert store.list() == []
    with pytest.raises(KeyNotFound):
        store.remove("prod")
    with pytest.raises(KeystoreError, match="invalid key name"):
        store.add("../evil", S3)


def test_share_and_import(tmp_path: Path) -> None:
    alice = Keystore(tmp_path / "alice", passphrase="a")
    bob = Keystore(tmp_path / "bob")
    alice.add("prod", S3)
    bundle = alice.share("prod", bob.public_key_pem())
    assert SECRET.encode() not in bundle
    key = bob.import_shared(bundle, name="from-alice")
    assert key.config == S3
    assert Keystore(tmp_path / "bob").get("from-alice").config == S3
    # a third party cannot open it, and a modified bundle is refused
    carol = Keystore(tmp_path / "carol")
    with pytest.raises(TamperedEntry, match="for someone else"):
        carol.import_shared(bundle)
    record = json.loads(bundle)
    record["name"] = "renamed"
    with pytest.raises(TamperedEntry):
        bob.import_shared(json.dumps(record).encode())
    # an entry file is not a shared bundle
    with pytest.raises(TamperedEntry, match="format"):
        bob.import_shared((tmp_path / "bob" / "entries" / "from-alice.json").read_bytes())


def test_from_env(tmp_path: Path) -> None:
    ks = Keystore.from_env({"BLOCKKIT_KEYSTORE": str(tmp_path / "k"), "BLOCKKIT_KEYSTORE_PASSPHRASE": "pp"})
    assert ks.path == tmp_path / "k" and ks.passphrase == "pp"


def test_redactor() -> None:
    r = Redactor([SECRET, "short"])
    text = f"url=?sig={SECRET.replace('/', '%2F').replace('+', '%2B').replace('=', '%3D')} raw {SECRET} json {json.dumps(SECRET)}"
    out = r.redact(text)
    assert SECRET not in out and "%2F" not in out and out.count("***") == 3
    assert redact("user short pw", ["short"]) == "user *** pw"
    assert r.redact_obj({"a": [SECRET, 1]}) == {"a": ["***", 1]}
    dav_secrets = DAV.secrets()
    basic = base64.b64encode(b"ann.user-7:p@ss w0rd").decode()
    assert basic in dav_secrets
    assert redact(f"Authorization: Basic {basic}", dav_secrets) == "Authorization: Basic ***"


def test_redactor_logging_filter(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    log = logging.getLogger("blockkit.test.redact")
    log.addFilter(Redactor([SECRET]).logging_filter())
    with caplog.at_level(logging.INFO, logger="blockkit.test.redact"):
        log.info("using %s", SECRET)
    assert SECRET not in caplog.text and "using ***" in caplog.text


# --- the key pair is never made over existing keys, and each failure says what it is ----------

from blockkit.storage._errors import DamagedPrivateKey, KeyPairMismatch, MissingPrivateKey  # noqa: E402


def _files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("passphrase", [None, "pp"])
def test_missing_private_key_is_its_own_error_and_creates_nothing(tmp_path: Path, passphrase: str | None) -> None:
    ks = Keystore(tmp_path / "ks", passphrase=passphrase)
    ks.add("k1", S3)
    aside = tmp_path / "aside.pem"
    (ks.path / "private_key.pem").rename(aside)
    before = _files(ks.path)
    for read in (lambda s: s.get("k1"), lambda s: s.share("k1", Keystore(tmp_path / "bob").public_key_pem())):
        with pytest.raises(MissingPrivateKey) as info:
            read(Keystore(ks.path, passphrase=passphrase))
        assert "restore private_key.pem" in info.value.message and "\n" not in info.value.message
    with pytest.raises(MissingPrivateKey):  # nor does a write
        Keystore(ks.path, passphrase=passphrase).add("k2", S3)
    with pytest.raises(MissingPrivateKey):
        Keystore(ks.path, passphrase=passphrase).init()
    assert _files(ks.path) == before  # public_key.pem untouched, nothing generated
    aside.rename(ks.path / "private_key.pem")
    again = Keystore(ks.path, passphrase=passphrase)
    again.add("k2", S3)
    assert again.get("k1").config == S3 and again.get("k2").config == S3


def test_reads_on_a_new_store_create_nothing(tmp_path: Path) -> None:
    ks = Keystore(tmp_path / "ks")
    with pytest.raises(KeyNotFound):
        ks.get("x")
    assert ks.list() == []
    assert not ks.path.exists()
    assert ks.init() is True and (ks.path / "private_key.pem").is_file()
    pem = (ks.path / "private_key.pem").read_bytes()
    assert ks.init() is False and (ks.path / "private_key.pem").read_bytes() == pem


def _flip(data: bytes) -> bytes:
    lines = data.split(b"\n")
    mid = bytearray(lines[len(lines) // 2])
    mid[10] = ord("A") if mid[10] != ord("A") else ord("B")
    lines[len(lines) // 2] = bytes(mid)
    return b"\n".join(lines)


DAMAGE = {
    "flipped": _flip,
    "truncated": lambda d: d[: len(d) // 2],
    "empty": lambda d: b"",
    "garbage": lambda d: b"\x00\xffnot a key at all\n" * 20,
    "truncated-body": lambda d: b"\n".join(d.split(b"\n")[:5] + d.split(b"\n")[-2:]),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("passphrase", [None, "correct horse"])
def test_damaged_private_key_is_not_a_wrong_passphrase(tmp_path: Path, damage: str, passphrase: str | None) -> None:
    ks = Keystore(tmp_path / "ks", passphrase=passphrase)
    ks.add("prod", S3)
    pem_path = ks.path / "private_key.pem"
    pem_path.write_bytes(DAMAGE[damage](pem_path.read_bytes()))
    with pytest.raises(DamagedPrivateKey) as info:
        Keystore(ks.path, passphrase=passphrase).get("prod")
    msg = info.value.headline()
    assert msg.startswith("[WRONG_INPUT_ERROR]") and "damaged" in msg and "passphrase" not in msg
    assert "\n" not in msg


def test_damage_detected_in_a_store_without_checksum_record(tmp_path: Path) -> None:
    # stores written before keypair.json: structural damage is still told apart
    ks = Keystore(tmp_path / "ks", passphrase="pp")
    ks.add("prod", S3)
    (ks.path / "keypair.json").unlink()
    pem_path = ks.path / "private_key.pem"
    pem_path.write_bytes(DAMAGE["truncated"](pem_path.read_bytes()))
    with pytest.raises(DamagedPrivateKey):
        Keystore(ks.path, passphrase="pp").get("prod")


def test_wrong_passphrase_still_says_so_with_intact_key(tmp_path: Path) -> None:
    ks = Keystore(tmp_path / "ks", passphrase="right")
    ks.add("prod", S3)
    with pytest.raises(WrongPassphrase) as info:
        Keystore(ks.path, passphrase="wrong").get("prod")
    assert "damaged" not in info.value.message


def test_add_refuses_a_public_key_of_another_pair(tmp_path: Path) -> None:
    ks = Keystore(tmp_path / "ks")
    ks.add("k1", S3)
    other = Keystore(tmp_path / "other")
    (ks.path / "public_key.pem").write_bytes(other.public_key_pem())
    before = _files(ks.path / "entries")
    with pytest.raises(KeyPairMismatch) as info:
        Keystore(ks.path).add("k2", S3)
    assert "public_key.pem" in info.value.message
    assert _files(ks.path / "entries") == before
    # deleting public_key.pem rewrites it from the private key; then adding works and stays readable
    (ks.path / "public_key.pem").unlink()
    Keystore(ks.path).add("k2", S3)
    assert Keystore(ks.path).get("k2").config == S3


def test_cli_keys_missing_private_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from blockkit.cli.main import app

    monkeypatch.setenv("BLOCKKIT_KEYSTORE", str(tmp_path / "ks"))
    monkeypatch.delenv("BLOCKKIT_KEYSTORE_PASSPHRASE", raising=False)
    r = CliRunner().invoke(app, ["keys", "init"])
    assert r.exit_code == 0 and "created keystore" in r.output
    r = CliRunner().invoke(app, ["keys", "init"])
    assert r.exit_code == 0 and "unchanged" in r.output
    r = CliRunner().invoke(app, ["keys", "add", "k1", "--type", "s3", "--access-key", "A"], input="s1\n")
    assert r.exit_code == 0, r.output
    (tmp_path / "ks" / "private_key.pem").unlink()
    pub = (tmp_path / "ks" / "public_key.pem").read_bytes()
    r = CliRunner().invoke(app, ["keys", "add", "k2", "--type", "s3", "--access-key", "A"], input="s2\n")
    assert r.exit_code == 4 and "private_key.pem is missing" in r.output
    r = CliRunner().invoke(app, ["keys", "init"])
    assert r.exit_code == 4 and "private_key.pem is missing" in r.output
    assert (tmp_path / "ks" / "public_key.pem").read_bytes() == pub
    assert not (tmp_path / "ks" / "entries" / "k2.json").exists()


def _crafted_share(recipient: Keystore, plaintext: bytes) -> bytes:
    """A share file anyone holding the recipient's public key can make: it authenticates, whatever it holds."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from blockkit.storage._keystore import SHARE_FORMAT, _aad, _b64, _oaep

    public = serialization.load_pem_public_key(recipient.public_key_pem())
    data_key, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
    return json.dumps({
        "format": SHARE_FORMAT, "name": "t", "type": "s3", "endpoint": "",
        "wrapped_key": _b64(public.encrypt(data_key, _oaep())),  # type: ignore[union-attr]
        "nonce": _b64(nonce),
        "ciphertext": _b64(AESGCM(data_key).encrypt(nonce, plaintext, _aad(SHARE_FORMAT, "t", "s3", ""))),
    }).encode()


@pytest.mark.parametrize("plaintext", [
    "not json".encode("utf-16"), b"[1, 2]", b'{"access_key": 1, "secret_key": {"a": 1}}', b"[" * 100_000,
])
def test_crafted_share_files_are_one_line_errors(store: Keystore, plaintext: bytes) -> None:
    with pytest.raises(KeystoreError) as err:
        store.import_shared(_crafted_share(store, plaintext))
    line = err.value.headline()
    assert "\n" not in line and line.startswith("[WRONG_INPUT_ERROR]") and err.value.exit_code == 4
    assert store.list() == []


def test_an_entry_that_is_a_folder_is_a_one_line_error(store: Keystore) -> None:
    store.add("prod", S3)
    entry = store.path / "entries" / "prod.json"
    entry.unlink()
    entry.mkdir()
    with pytest.raises(KeystoreError) as err:
        store.get("prod")
    assert "\n" not in err.value.headline() and err.value.exit_code == 4 and "cannot read" in err.value.headline()
