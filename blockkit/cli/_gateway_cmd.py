"""`blockkit gateway`: serve folders as S3 buckets (inputs read-only, `out` writable)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import List, Optional

import typer

from blockkit.cli._console import reported_errors


def gateway(
    inputs: List[str] = typer.Option([], "--input", "-i", help="A read-only bucket: NAME=DIR (repeatable)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder served as the writable bucket 'out'."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(0, "--port", help="Port to listen on (0: any free port)."),
    access_key: Optional[str] = typer.Option(None, "--access-key", envvar="BLOCKKIT_GATEWAY_ACCESS_KEY", help="Require SigV4 with this access key."),
    secret_key: Optional[str] = typer.Option(None, "--secret-key", envvar="BLOCKKIT_GATEWAY_SECRET_KEY", help="Secret key paired with --access-key."),
    access_log: Optional[Path] = typer.Option(None, "--access-log", help="Append one JSON line per request here."),
    region: str = typer.Option("us-east-1", "--region", help="Region reported to clients."),
    min_part_size: int = typer.Option(
        5 * 1024 * 1024, "--min-part-size", help="Bytes every multipart part but the last must have (S3: 5 MiB; 0: no minimum)."
    ),
) -> None:
    """Serve folders over S3 until interrupted; prints the endpoint and client settings."""
    from blockkit.gateway import Credentials, Gateway, GatewayConfigError, client_env
    from blockkit.gateway._buckets import parse_inputs

    with reported_errors():
        if bool(access_key) != bool(secret_key):
            raise GatewayConfigError("give both --access-key and --secret-key, or neither")
        if not inputs and output is None:
            raise GatewayConfigError("nothing to serve: give at least one --input NAME=DIR or --output DIR")
        credentials = Credentials(access_key, secret_key) if access_key and secret_key else None
        server = Gateway(parse_inputs(inputs), output, host=host, port=port, credentials=credentials, access_log=access_log, region=region, min_part_size=min_part_size)
        endpoint = server.bind()
    typer.echo(endpoint)
    buckets = ", ".join(f"{name} ({'read-write' if b.writable else 'read-only'})" for name, b in server.state.buckets.items())
    typer.echo(f"buckets: {buckets}", err=True)
    if credentials is None:
        typer.echo("auth: off (any credentials accepted); client settings:", err=True)
        settings = client_env(endpoint, region=region)
    else:  # the secret is never printed: the client has it already
        typer.echo(f"auth: SigV4 required (access key {credentials.access_key}); client settings:", err=True)
        settings = client_env(endpoint, Credentials(credentials.access_key, "<your secret key>"), region=region)
    for name, value in settings.items():
        typer.echo(f"  export {name}={shlex.quote(value)}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    """Add the `gateway` command to the blockkit CLI."""
    app.command("gateway")(gateway)
