"""Bearer-token authentication for the engine server."""

from __future__ import annotations

import hmac
from pathlib import Path


class TokenError(Exception):
    """The token file cannot be used."""


def read_token(path: Path, what: str = "the token file") -> str:
    """The token in ``path`` (surrounding whitespace removed); it must be non-empty.

    ``what`` names the file in error messages (e.g. the setting it came from).
    """
    file = path.expanduser()
    try:
        token = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenError(f"cannot read {what} {file}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise TokenError(f"{what} {file} is not a text file") from exc
    if not token:
        raise TokenError(f"{what} {file} is empty")
    if any(c.isspace() for c in token):
        raise TokenError(f"the token in {what} {file} contains whitespace")
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
