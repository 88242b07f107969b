"""Tokens: random secrets handed out once; the store keeps only their SHA-256."""

from __future__ import annotations

import hashlib
import secrets

ROLES = ("agent", "read", "admin")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()
