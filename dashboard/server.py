"""Run the dashboard with uvicorn, enforcing the bind rules: loopback by default, a token otherwise.

A dashboard shows every curated volume of a hospital's corpus and lets anyone who reaches it change
which volumes a model trains on, so a non-loopback bind without a token is refused rather than
warned about.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import uvicorn

from dashboard.app import create_app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
TOKEN_ENV = "MRIFOUNDRY_DASHBOARD_TOKEN"
MIN_TOKEN_LENGTH = 16
_TOKEN_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(24))'"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; False for 0.0.0.0, '::' and every other address."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so treat it as exposed


def resolve_token(token: str | None) -> str | None:
    """The token from --token, else from $MRIFOUNDRY_DASHBOARD_TOKEN (keeps it out of `ps` output)."""
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    return token or None


def check_bind(host: str, token: str | None) -> None:
    """Refuse binds that would expose the dashboard without a token, and guessable tokens.

    Raises:
        ValueError: non-loopback host without a token, or a token shorter than MIN_TOKEN_LENGTH.
    """
    if not 0 < len(host) <= 255 or any(c.isspace() for c in host):
        raise ValueError(f"--host {host!r} is not a host name or address")
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"--token has {len(token)} characters; use at least {MIN_TOKEN_LENGTH} ({_TOKEN_HINT})")
    if not is_loopback(host) and token is None:
        raise ValueError(
            f"--host {host} exposes the dashboard beyond this machine; pass --token or set {TOKEN_ENV} "
            f"({_TOKEN_HINT}), or keep the default --host {DEFAULT_HOST}"
        )


def build_server(
    warehouse: Path | str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    rater: str | None = None,
    log_level: str = "info",
) -> uvicorn.Server:
    """A configured (not yet started) uvicorn server; tests run it in a thread and stop it.

    Raises:
        ValueError: see `check_bind`; a port outside 0..65535.
        FileNotFoundError: the warehouse has no manifest.
    """
    check_bind(host, token)
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port} is not a TCP port (0-65535)")
    # A named non-loopback host is also answered without further Host checks because a token guards it.
    app = create_app(warehouse, token, rater=rater, trusted_hosts=() if is_loopback(host) else (host,))
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, server_header=False, proxy_headers=False, access_log=False
    )
    return uvicorn.Server(config)


def serve(
    warehouse: Path | str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    rater: str | None = None,
) -> None:
    """Serve until interrupted (Ctrl-C)."""
    build_server(warehouse, host, port, token, rater).run()
