"""`python -m blockkit.gateway`: serve folders over S3 and print the endpoint once listening."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from blockkit.contract.errors import BlockkitError
from blockkit.gateway._buckets import parse_inputs
from blockkit.gateway._multipart import MIN_PART_SIZE
from blockkit.gateway._server import Gateway
from blockkit.gateway._sigv4 import Credentials


def main(argv: list[str] | None = None) -> int:
    """Run the gateway until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m blockkit.gateway", description=__doc__)
    parser.add_argument("--input", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--access-log", type=Path)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--min-part-size", type=int, default=MIN_PART_SIZE, help="bytes; every multipart part but the last must be this big")
    args = parser.parse_args(argv)
    access = os.environ.get("BLOCKKIT_GATEWAY_ACCESS_KEY")
    secret = os.environ.get("BLOCKKIT_GATEWAY_SECRET_KEY")
    try:
        gateway = Gateway(
            parse_inputs(args.input),
            args.output,
            host=args.host,
            port=args.port,
            credentials=Credentials(access, secret) if access and secret else None,
            access_log=args.access_log,
            region=args.region,
            min_part_size=args.min_part_size,
        )
        endpoint = gateway.start()
    except BlockkitError as err:
        print(err.headline(), file=sys.stderr)
        return err.exit_status
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(endpoint, flush=True)
    stop.wait()
    gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
