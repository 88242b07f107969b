"""Tokens: random secrets handed out once; the store keeps only their SHA-256."""

from __future__ import annotations

import hashlib
import secrets

ROLES = ("agent", "read", "admin")


#: What every token fleetsync makes starts with: secret scanners can spot one, and a command line
#: never mistakes one for a flag (a bare url-safe token starts with '-' one time in 32).
TOKEN_PREFIX = "fst_"


def new_token() -> str:
    """A new secret: the prefix and 256 random bits, url-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()
