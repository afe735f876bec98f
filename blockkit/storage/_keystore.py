"""The keystore: named S3/WebDAV credentials, encrypted at rest with RSA-OAEP-SHA256 + AES-256-GCM."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Union
from urllib.parse import urlsplit, urlunsplit

from blockkit.storage._errors import (
    DamagedPrivateKey,
    InsecureKeyFile,
    KeyNotFound,
    KeyPairMismatch,
    MissingPrivateKey,
    KeystoreError,
    TamperedEntry,
    WrongKeyType,
    WrongPassphrase,
)
from blockkit.storage._redact import Redactor

ENV_PATH = "BLOCKKIT_KEYSTORE"
ENV_PASSPHRASE = "BLOCKKIT_KEYSTORE_PASSPHRASE"
ENTRY_FORMAT = "blockkit-keystore-entry/1"
SHARE_FORMAT = "blockkit-shared-key/1"
PRIVATE_KEY_FILE = "private_key.pem"
PUBLIC_KEY_FILE = "public_key.pem"
KEYPAIR_FILE = "keypair.json"  # sha-256 of private_key.pem: tells damage from a wrong passphrase
KEYPAIR_FORMAT = "blockkit-keypair/1"
RSA_BITS = 3072
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def default_path(env: Mapping[str, str] | None = None) -> Path:
    """The keystore folder: $BLOCKKIT_KEYSTORE or ~/.config/blockkit/keystore."""
    env = os.environ if env is None else env
    if env.get(ENV_PATH):
        return Path(env[ENV_PATH]).expanduser()
    return Path.home() / ".config" / "blockkit" / "keystore"


@dataclass(frozen=True)
class S3KeyConfig:
    """Credentials for an S3-compatible object store."""

    access_key: str
    secret_key: str
    endpoint: str | None = None
    region: str | None = None
    bucket: str | None = None

    type = "s3"

    def secrets(self) -> list[str]:
        """The values that must never be shown."""
        return [self.secret_key]

    def public_endpoint(self) -> str:
        """The endpoint as it may be listed."""
        return _strip_userinfo(self.endpoint or "")


@dataclass(frozen=True)
class WebDavKeyConfig:
    """Credentials for a WebDAV server (Basic auth)."""

    endpoint: str
    username: str
    password: str

    type = "webdav"

    def secrets(self) -> list[str]:
        """The values that must never be shown (password and its Basic token)."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return [self.password, token]

    def public_endpoint(self) -> str:
        """The endpoint as it may be listed."""
        return _strip_userinfo(self.endpoint)


KeyConfig = Union[S3KeyConfig, WebDavKeyConfig]
KEY_TYPES: dict[str, type[S3KeyConfig] | type[WebDavKeyConfig]] = {
    "s3": S3KeyConfig,
    "webdav": WebDavKeyConfig,
}


def _strip_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def config_from_dict(key_type: str, data: Mapping[str, Any]) -> KeyConfig:
    """Build a typed key config; unknown types and missing fields are KeystoreErrors."""
    cls = KEY_TYPES.get(key_type)
    if cls is None:
        raise KeystoreError(f"unknown key type {key_type!r}; use one of: {', '.join(KEY_TYPES)}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise KeystoreError(f"{key_type} key: unknown field(s) {', '.join(unknown)}")
    # dataclass fields without defaults are the required ones
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [n for n in required if not data.get(n)]
    if missing:
        raise KeystoreError(f"{key_type} key: missing {', '.join(missing)}")
    wrong = sorted(k for k, v in data.items() if v is not None and not isinstance(v, str))
    if wrong:
        raise KeystoreError(f"{key_type} key: field(s) {', '.join(wrong)} must be text")
    return cls(**{k: v for k, v in data.items() if v is not None})


@dataclass(frozen=True)
class Key:
    """A named credential, decrypted in memory only."""

    name: str
    config: KeyConfig

    @property
    def type(self) -> str:
        """`s3` or `webdav`."""
        return self.config.type

    def secrets(self) -> list[str]:
        """Secret values to redact wherever this key was used."""
        return self.config.secrets()

    def redactor(self) -> Redactor:
        """A Redactor that masks this key's secrets."""
        return Redactor(self.secrets())

    def __repr__(self) -> str:  # never print secrets, even in a debugger
        return f"Key(name={self.name!r}, type={self.type!r}, endpoint={self.config.public_endpoint()!r})"


@dataclass(frozen=True)
class KeyInfo:
    """What `keys list` shows: never secrets."""

    name: str
    type: str
    endpoint: str

    def to_dict(self) -> dict[str, str]:
        """JSON form."""
        return asdict(self)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (ValueError, TypeError) as exc:
        raise TamperedEntry(f"{what} is not valid base64: the entry was modified") from exc


def _aad(fmt: str, name: str, key_type: str, endpoint: str) -> bytes:
    # Binding name, type and listed endpoint as associated data makes GCM reject
    # an entry that was renamed, swapped with another or had its header edited.
    return json.dumps([fmt, name, key_type, endpoint], separators=(",", ":")).encode()


def _oaep() -> Any:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def seal(fmt: str, name: str, config: KeyConfig, public_key: Any) -> dict[str, Any]:
    """Encrypt a config for a public key: a fresh AES-256-GCM key, wrapped with RSA-OAEP."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    endpoint = config.public_endpoint()
    plaintext = json.dumps({k: v for k, v in asdict(config).items() if v is not None}).encode()
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, _aad(fmt, name, config.type, endpoint))
    return {
        "format": fmt,
        "name": name,
        "type": config.type,
        "endpoint": endpoint,
        "wrapped_key": _b64(public_key.encrypt(data_key, _oaep())),
        "nonce": _b64(nonce),
        "ciphertext": _b64(ciphertext),
    }


def unseal(record: Mapping[str, Any], private_key: Any, *, fmt: str, where: str) -> Key:
    """Decrypt a sealed record; any modification raises TamperedEntry."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        name, key_type, endpoint = str(record["name"]), str(record["type"]), str(record["endpoint"])
        wrapped, nonce, ciphertext = record["wrapped_key"], record["nonce"], record["ciphertext"]
    except (KeyError, TypeError) as exc:
        raise TamperedEntry(f"{where}: not a keystore record (missing {exc})") from exc
    if record.get("format") != fmt:
        raise TamperedEntry(f"{where}: unknown format {record.get('format')!r}, expected {fmt!r}")
    try:
        data_key = private_key.decrypt(_unb64(wrapped, f"{where}: wrapped key"), _oaep())
    except ValueError as exc:
        raise TamperedEntry(
            f"{where}: the wrapped key does not open with this keystore's private key (tampered or for someone else)"
        ) from exc
    try:
        plaintext = AESGCM(data_key).decrypt(
            _unb64(nonce, f"{where}: nonce"),
            _unb64(ciphertext, f"{where}: ciphertext"),
            _aad(fmt, name, key_type, endpoint),
        )
    except (InvalidTag, ValueError) as exc:
        raise TamperedEntry(f"{where}: authentication failed; the entry was modified or swapped") from exc
    try:
        data = json.loads(plaintext)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise TamperedEntry(f"{where}: the decrypted key is not JSON; not a blockkit key") from exc
    if not isinstance(data, dict):
        raise TamperedEntry(f"{where}: the decrypted key is not a JSON object; not a blockkit key")
    return Key(name, config_from_dict(key_type, data))


@dataclass
class Keystore:
    """Named credentials in a folder: one encrypted JSON file per entry plus the RSA key pair."""

    path: Path = field(default_factory=default_path)
    passphrase: str | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path).expanduser()
        self._private_key: Any = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Keystore":
        """The keystore named by BLOCKKIT_KEYSTORE / BLOCKKIT_KEYSTORE_PASSPHRASE."""
        env = os.environ if env is None else env
        return cls(default_path(env), env.get(ENV_PASSPHRASE) or None)

    # --- files ------------------------------------------------------------
    @property
    def entries_dir(self) -> Path:
        """Where the encrypted entries live."""
        return self.path / "entries"

    def _entry_path(self, name: str) -> Path:
        _check_name(name)
        return self.entries_dir / f"{name}.json"

    def _ensure_dirs(self) -> None:
        for d in (self.path, self.entries_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(d, 0o700)

    # --- key pair ---------------------------------------------------------
    def _is_new(self) -> bool:
        """True when the store holds nothing yet: no key files, no entries (the only time a pair is made)."""
        if (self.path / PRIVATE_KEY_FILE).exists() or (self.path / PUBLIC_KEY_FILE).exists():
            return False
        return not (self.entries_dir.is_dir() and any(self.entries_dir.glob("*.json")))

    def init(self) -> bool:
        """Create the key pair of a brand-new store; False when it has one already (nothing is replaced)."""
        if not self._is_new():
            self._load_private()
            return False
        self._private_key = self._generate()
        return True

    def _generate(self) -> Any:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        self._ensure_dirs()
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        encryption: Any = (
            serialization.BestAvailableEncryption(self.passphrase.encode())
            if self.passphrase
            else serialization.NoEncryption()
        )
        pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        _write_private(self.path / PRIVATE_KEY_FILE, pem)
        self._record_checksum(pem)
        pub = private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _atomic_write(self.path / PUBLIC_KEY_FILE, pub, 0o644)
        return private_key

    def _record_checksum(self, pem: bytes) -> None:
        # Without it, a flipped byte in an encrypted key reads exactly like a wrong passphrase.
        record = {"format": KEYPAIR_FORMAT, "private_key_sha256": hashlib.sha256(pem).hexdigest()}
        _atomic_write(self.path / KEYPAIR_FILE, json.dumps(record).encode(), 0o600)

    def _recorded_checksum(self) -> str | None:
        try:
            record = json.loads((self.path / KEYPAIR_FILE).read_text())
            value = record["private_key_sha256"]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise DamagedPrivateKey(
                f"{self.path / KEYPAIR_FILE} is unreadable; the keystore's key files were modified"
            ) from exc
        return str(value)

    def _missing_private(self, create: bool) -> Any:
        pem_path = self.path / PRIVATE_KEY_FILE
        if self._is_new():
            if create:
                return self._generate()
            raise MissingPrivateKey(
                f"keystore {self.path} has no key pair yet: add a key (`blockkit keys add`) or run `blockkit keys init`"
            )
        held = len(list(self.entries_dir.glob("*.json"))) if self.entries_dir.is_dir() else 0
        raise MissingPrivateKey(
            f"{pem_path} is missing but the keystore holds {held} key(s) and public_key.pem: restore private_key.pem "
            f"from your backup (blockkit never makes a new key pair over existing keys)"
        )

    def _load_private(self, *, create: bool = False) -> Any:
        from cryptography.hazmat.primitives import serialization

        if self._private_key is not None:
            return self._private_key
        pem_path = self.path / PRIVATE_KEY_FILE
        if not pem_path.exists():
            self._private_key = self._missing_private(create)
            return self._private_key
        pem = pem_path.read_bytes()
        recorded = self._recorded_checksum()
        damaged = f"{pem_path} is damaged"
        restore = "restore it from your backup"
        if recorded is not None and hashlib.sha256(pem).hexdigest() != recorded:
            raise DamagedPrivateKey(f"{damaged}: its content changed since it was written; {restore}")
        kind = _pem_kind(pem)
        if kind is None:
            raise DamagedPrivateKey(f"{damaged}: not a PEM private key (empty, truncated or edited); {restore}")
        encrypted = kind == "ENCRYPTED PRIVATE KEY"
        if not encrypted:
            mode = stat.S_IMODE(pem_path.stat().st_mode)
            if mode & 0o077:
                raise InsecureKeyFile(
                    f"refusing unencrypted private key {pem_path} with mode {mode:04o}: "
                    f"run `chmod 600 {pem_path}` or protect it with {ENV_PASSPHRASE}"
                )
        elif not self.passphrase:
            raise WrongPassphrase(f"keystore {self.path} is passphrase-protected: set {ENV_PASSPHRASE}")
        try:
            self._private_key = serialization.load_pem_private_key(
                pem, password=self.passphrase.encode() if encrypted and self.passphrase else None
            )
        except (ValueError, TypeError) as exc:
            if not encrypted:
                raise DamagedPrivateKey(f"{damaged}: the unencrypted key does not parse; {restore}") from exc
            unsure = "" if recorded is not None else ", or the key file is damaged"
            raise WrongPassphrase(
                f"wrong passphrase for keystore {self.path} (check {ENV_PASSPHRASE}){unsure}"
            ) from exc
        if recorded is None:
            self._record_checksum(pem)
        return self._private_key

    def _checked_public_key(self, private_key: Any) -> Any:
        """public_key.pem, verified to be the public half of the private key (rewritten from it when missing)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        pub_path = self.path / PUBLIC_KEY_FILE
        derived = private_key.public_key()
        if not pub_path.exists():
            pem = derived.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            _atomic_write(pub_path, pem, 0o644)
            return derived
        try:
            stored = serialization.load_pem_public_key(pub_path.read_bytes())
            matches = isinstance(stored, rsa.RSAPublicKey) and stored.public_numbers() == derived.public_numbers()
        except (ValueError, TypeError, AttributeError):
            matches = False
        if not matches:
            raise KeyPairMismatch(
                f"{pub_path} is not the public half of {self.path / PRIVATE_KEY_FILE}: a key added now could never "
                f"be read; restore the matching pair (or delete public_key.pem to rewrite it from the private key)"
            )
        return derived

    def public_key(self) -> Any:
        """This keystore's RSA public key (the pair is made only for a brand-new store)."""
        from cryptography.hazmat.primitives import serialization

        pub_path = self.path / PUBLIC_KEY_FILE
        if not pub_path.exists():
            return self._checked_public_key(self._load_private(create=True))
        try:
            return serialization.load_pem_public_key(pub_path.read_bytes())
        except (ValueError, TypeError) as exc:
            raise KeyPairMismatch(f"{pub_path} is not a PEM public key; restore it from your backup") from exc

    def public_key_pem(self) -> bytes:
        """This keystore's public key as PEM: give it to people who share keys with you."""
        from cryptography.hazmat.primitives import serialization

        return bytes(self.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ))

    # --- entries ----------------------------------------------------------
    def add(self, name: str, config: KeyConfig, *, overwrite: bool = False) -> Key:
        """Store a key encrypted; refuses to replace one unless overwrite."""
        target = self._entry_path(name)
        if target.exists() and not overwrite:
            raise KeystoreError(f"a key named {name!r} exists; remove it first (`blockkit keys remove {name}`)")
        if not isinstance(config, tuple(KEY_TYPES.values())):
            raise KeystoreError(f"unsupported key config {type(config).__name__}")
        # Load the private key first (a brand-new store gets its pair here, never an existing one), so a
        # wrong passphrase, a missing or damaged private key, or a foreign public_key.pem fails before writing.
        public = self._checked_public_key(self._load_private(create=True))
        record = seal(ENTRY_FORMAT, name, config, public)
        self._ensure_dirs()
        _atomic_write(target, json.dumps(record, indent=2).encode(), 0o600)
        return Key(name, config)

    def get(self, name: str, key_type: str | None = None) -> Key:
        """Decrypt and return a key; `key_type` checks it is of the expected type."""
        path = self._entry_path(name)
        if not path.exists():
            raise KeyNotFound(f"no key named {name!r}; see `blockkit keys list`")
        record = _read_record(path)
        if record.get("name") != name:
            raise TamperedEntry(f"{path}: holds key {record.get('name')!r}, not {name!r}; the entry was swapped")
        key = unseal(record, self._load_private(), fmt=ENTRY_FORMAT, where=f"key {name!r}")
        if key_type is not None and key.type != key_type:
            article = "an" if key_type == "s3" else "a"
            raise WrongKeyType(f"key {name!r} is a {key.type} key; {article} {key_type} key is needed here")
        return key

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(_NAME.match(name)) and self._entry_path(name).exists()

    def list(self) -> list[KeyInfo]:
        """Names, types and endpoints of all keys (no decryption, no secrets)."""
        if not self.entries_dir.is_dir():
            return []
        out = []
        for p in sorted(self.entries_dir.glob("*.json")):
            try:
                record = json.loads(p.read_text())
                out.append(KeyInfo(str(record["name"]), str(record["type"]), str(record.get("endpoint", ""))))
            except (ValueError, KeyError, TypeError):
                out.append(KeyInfo(p.stem, "?", "(unreadable entry)"))
        return out

    def remove(self, name: str) -> None:
        """Delete a key."""
        path = self._entry_path(name)
        if not path.exists():
            raise KeyNotFound(f"no key named {name!r}; see `blockkit keys list`")
        path.unlink()

    # --- sharing ----------------------------------------------------------
    def share(self, name: str, public_key_pem: bytes) -> bytes:
        """Export a key encrypted for someone else's public key (JSON bytes; no plaintext)."""
        from cryptography.hazmat.primitives import serialization

        key = self.get(name)
        try:
            recipient = serialization.load_pem_public_key(public_key_pem)
        except (ValueError, TypeError) as exc:
            raise KeystoreError("the recipient's public key is not a PEM public key") from exc
        from cryptography.hazmat.primitives.asymmetric import rsa

        if not isinstance(recipient, rsa.RSAPublicKey) or recipient.key_size < 2048:
            raise KeystoreError("the recipient's public key must be RSA with at least 2048 bits")
        return json.dumps(seal(SHARE_FORMAT, key.name, key.config, recipient), indent=2).encode()

    def import_shared(self, data: bytes, *, name: str | None = None, overwrite: bool = False) -> Key:
        """Import a key shared with this keystore's public key, optionally under another name."""
        try:
            record = json.loads(data)
        except ValueError as exc:
            raise TamperedEntry("the shared key file is not JSON") from exc
        if not isinstance(record, dict):
            raise TamperedEntry("the shared key file is not a shared key")
        key = unseal(record, self._load_private(create=True), fmt=SHARE_FORMAT, where="shared key")
        return self.add(name or key.name, key.config, overwrite=overwrite)


def _pem_kind(pem: bytes) -> str | None:
    """`PRIVATE KEY` / `ENCRYPTED PRIVATE KEY` when pem is one well-formed PEM block of that kind, else None."""
    text = pem.decode("ascii", "replace").strip().splitlines()
    if len(text) < 3:
        return None
    head, tail = text[0].strip(), text[-1].strip()
    for kind in ("ENCRYPTED PRIVATE KEY", "PRIVATE KEY", "RSA PRIVATE KEY"):
        if head == f"-----BEGIN {kind}-----" and tail == f"-----END {kind}-----":
            break
    else:
        return None
    try:
        der = base64.b64decode("".join(line.strip() for line in text[1:-1]), validate=True)
    except ValueError:
        return None
    # DER SEQUENCE whose declared length is exactly what follows: catches truncation and padding
    if len(der) < 2 or der[0] != 0x30:
        return None
    first = der[1]
    if first < 0x80:
        length, offset = first, 2
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or len(der) < 2 + n:
            return None
        length, offset = int.from_bytes(der[2:2 + n], "big"), 2 + n
    return kind if offset + length == len(der) else None


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise KeystoreError(
            f"invalid key name {name!r}: use letters, digits, '.', '_' or '-' (max 64, no leading symbol)"
        )


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except ValueError as exc:  # also bytes that are not UTF-8
        raise TamperedEntry(f"{path}: not JSON; the entry was modified") from exc
    except OSError as exc:  # a folder, or a file this user may not read
        raise KeystoreError(f"{path}: cannot read the entry ({exc.strerror or type(exc).__name__})") from exc
    if not isinstance(record, dict):
        raise TamperedEntry(f"{path}: not a keystore entry")
    return record


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_private(path: Path, pem: bytes) -> None:
    # Created 0600 from the first byte (no window where umask decides).
    _atomic_write(path, pem, 0o600)
