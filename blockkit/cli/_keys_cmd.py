"""`blockkit keys ...`: add, list, remove, share and import encrypted credentials."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from blockkit.cli._console import reported_errors

keys_app = typer.Typer(
    name="keys",
    help="Named S3/WebDAV credentials, encrypted at rest (RSA-OAEP + AES-256-GCM). "
    "Location: $BLOCKKIT_KEYSTORE; passphrase: $BLOCKKIT_KEYSTORE_PASSPHRASE.",
    no_args_is_help=True,
)


def _read_secret(label: str) -> str:
    # A terminal gets a hidden prompt; a pipe gives its first line (for scripts: `... < secret.txt`).
    if sys.stdin.isatty():
        return str(typer.prompt(label, hide_input=True))
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def _read_plain(label: str) -> str:
    if sys.stdin.isatty():
        return str(typer.prompt(label))
    return sys.stdin.readline().rstrip("\r\n")


@keys_app.command("init")
def init() -> None:
    """Create the key pair of a new keystore (adding or importing a first key does it too); never replaces one."""
    from blockkit.storage._keystore import Keystore

    with reported_errors():
        store = Keystore.from_env()
        made = store.init()
    typer.echo(f"created keystore {store.path}" if made else f"keystore {store.path} exists; its key pair is unchanged")


@keys_app.command("add")
def add(
    name: str = typer.Argument(..., help="Key name, used as --key NAME or keystore://NAME."),
    key_type: str = typer.Option(..., "--type", help="s3 or webdav."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="S3 endpoint URL (empty = AWS) or WebDAV base URL."),
    region: Optional[str] = typer.Option(None, "--region", help="S3 region."),
    bucket: Optional[str] = typer.Option(None, "--bucket", help="S3 bucket (needed for artifacts)."),
    access_key: Optional[str] = typer.Option(None, "--access-key", help="S3 access key id (prompted if absent)."),
    username: Optional[str] = typer.Option(None, "--username", help="WebDAV user (prompted if absent)."),
    secret: Optional[str] = typer.Option(
        None, "--secret", help="S3 secret key or WebDAV password. Prefer the prompt or stdin: options end up in shell history.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace a key of the same name."),
) -> None:
    """Add a key; secrets are prompted (hidden) or read from stdin, never echoed."""
    from blockkit.storage._errors import KeystoreError
    from blockkit.storage._keystore import Keystore, S3KeyConfig, WebDavKeyConfig

    with reported_errors():
        store = Keystore.from_env()
        if key_type == "s3":
            ak = access_key or _read_plain("Access key id")
            sk = secret if secret is not None else _read_secret("Secret access key")
            if not ak or not sk:
                raise KeystoreError("an s3 key needs an access key id and a secret key")
            config: S3KeyConfig | WebDavKeyConfig = S3KeyConfig(ak, sk, endpoint or None, region, bucket)
        elif key_type == "webdav":
            if not endpoint:
                raise KeystoreError("a webdav key needs --endpoint (the server's base URL)")
            user = username or _read_plain("User name")
            pw = secret if secret is not None else _read_secret("Password")
            if not user or not pw:
                raise KeystoreError("a webdav key needs a user name and a password")
            config = WebDavKeyConfig(endpoint, user, pw)
        else:
            raise KeystoreError(f"unknown key type {key_type!r}; use --type s3 or --type webdav")
        store.add(name, config, overwrite=force)
    typer.echo(f"added {key_type} key {name!r} to {store.path}")


@keys_app.command("list")
def list_keys(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List keys: names, types and endpoints (never secrets)."""
    from blockkit.storage._keystore import Keystore

    with reported_errors(as_json=as_json):
        infos = Keystore.from_env().list()
    if as_json:
        typer.echo(json.dumps([i.to_dict() for i in infos], indent=2))
        return
    if not infos:
        typer.echo("no keys; add one with `blockkit keys add NAME --type s3|webdav ...`")
        return
    width = max(len(i.name) for i in infos)
    for i in infos:
        typer.echo(f"{i.name:<{width}}  {i.type:<6}  {i.endpoint or '(default endpoint)'}")


@keys_app.command("remove")
def remove(name: str = typer.Argument(..., help="Key name.")) -> None:
    """Delete a key."""
    from blockkit.storage._keystore import Keystore

    with reported_errors():
        Keystore.from_env().remove(name)
    typer.echo(f"removed key {name!r}")


@keys_app.command("public-key")
def public_key(output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write to a file.")) -> None:
    """Print this keystore's public key: others use it to share keys with you."""
    from blockkit.storage._keystore import Keystore

    with reported_errors():
        pem = Keystore.from_env().public_key_pem()
    if output:
        output.write_bytes(pem)
    else:
        typer.echo(pem.decode().rstrip())


@keys_app.command("share")
def share(
    name: str = typer.Argument(..., help="Key to share."),
    public_key_file: Path = typer.Option(..., "--public-key", help="The recipient's PEM public key (`blockkit keys public-key`)."),
    output: Path = typer.Option(..., "-o", "--output", help="File to write the encrypted key to."),
) -> None:
    """Export a key encrypted for someone else's public key (no plaintext leaves the keystore)."""
    from blockkit.storage._errors import KeystoreError
    from blockkit.storage._keystore import Keystore

    with reported_errors():
        try:
            pem = public_key_file.read_bytes()
        except OSError as exc:
            raise KeystoreError(f"cannot read public key {public_key_file}: {exc.strerror}") from exc
        output.write_bytes(Keystore.from_env().share(name, pem))
    typer.echo(f"wrote {output}: only the holder of that public key's private key can import it")


@keys_app.command("import")
def import_key(
    file: Path = typer.Argument(..., help="A file made by `blockkit keys share`."),
    name: Optional[str] = typer.Option(None, "--name", help="Store under another name."),
    force: bool = typer.Option(False, "--force", help="Replace a key of the same name."),
) -> None:
    """Import a key someone shared with your public key."""
    from blockkit.storage._errors import KeystoreError
    from blockkit.storage._keystore import Keystore

    with reported_errors():
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise KeystoreError(f"cannot read {file}: {exc.strerror}") from exc
        key = Keystore.from_env().import_shared(data, name=name, overwrite=force)
    typer.echo(f"imported {key.type} key {key.name!r}")


def register(app: typer.Typer) -> None:
    """Add the `keys` command group to the blockkit CLI."""
    app.add_typer(keys_app, name="keys")
