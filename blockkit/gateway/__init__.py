"""The S3 gateway: serve folders as S3 buckets (inputs read-only, `out` writable) for blocks and tools."""

from __future__ import annotations

from blockkit.gateway._errors import GatewayConfigError, GatewayError, GatewayStartError
from blockkit.gateway._process import GatewayProcess, client_env, start_gateway_subprocess
from blockkit.gateway._server import Gateway
from blockkit.gateway._sigv4 import Credentials

__all__ = [
    "Credentials",
    "Gateway",
    "GatewayConfigError",
    "GatewayError",
    "GatewayProcess",
    "GatewayStartError",
    "client_env",
    "start_gateway_subprocess",
]
