"""Bearer-token authentication for the engine server."""

from __future__ import annotations

import hmac
from pathlib import Path


class TokenError(Exception):
    """The token file cannot be used."""


def read_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace removed); it must be non-empty."""
    try:
        token = path.expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read the token file {path}: {exc}") from exc
    if not token:
        raise TokenError(f"the token file {path} is empty")
    if any(c.isspace() for c in token):
        raise TokenError(f"the token in {path} contains whitespace")
    return token


def authorized(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (compared in constant time)."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the server on this machine."""
    return host in ("localhost", "::1") or host.startswith("127.")
