"""Service account tokens of a simulated cluster: issued by a TokenRequest, checked on every request.

``kubectl create token NAME -n NAMESPACE`` (a ``POST`` of an ``authentication.k8s.io/v1``
TokenRequest to ``/api/v1/namespaces/NAMESPACE/serviceaccounts/NAME/token``) gets a token
for a ServiceAccount, as on a real cluster; requests sent with it are authorized by RBAC
(:mod:`fleetsync.sim.rbac`). Like Kubernetes' bound tokens, a token names the account's
uid and expires: it stops working when it expires or when the account is deleted (a new
account of the same name has another uid).

A token is ``sim-sa.PAYLOAD.MAC``: the payload (namespace, name, uid, expiry) in base64url
JSON, and an HMAC-SHA256 of it with a key derived from the cluster's admin token, so the
simulator keeps no table of tokens. Not a JWT: nothing outside the simulator reads them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

import orjson

PREFIX = "sim-sa."
#: A TokenRequest's ``expirationSeconds`` when it names none (Kubernetes: one hour).
DEFAULT_SECONDS = 3600
#: The shortest lifetime a TokenRequest may ask for (Kubernetes refuses less than 10 minutes).
MIN_SECONDS = 600
#: Longer requests are cut to this (the API server's ``--service-account-max-token-expiration``; 48 h here).
MAX_SECONDS = 48 * 3600
#: Longer bearer tokens are not looked at (bounded input).
MAX_TOKEN_BYTES = 4096


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """Whom a valid token speaks for, and until when (Unix seconds)."""

    namespace: str
    name: str
    uid: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Issues and checks the service account tokens of one cluster."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def for_cluster(cls, admin_token: str) -> TokenSigner:
        """The signer of a cluster whose admin token is ``admin_token`` (secret, and per cluster)."""
        return cls(hashlib.sha256(b"fleetsync-sim service account tokens:" + admin_token.encode()).digest())

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def issue(self, claims: TokenClaims) -> str:
        payload = _b64(orjson.dumps({"ns": claims.namespace, "name": claims.name, "uid": claims.uid, "exp": claims.expires}))
        return f"{PREFIX}{payload}.{self._mac(payload)}"

    def verify(self, token: str, *, now: float) -> TokenClaims | None:
        """The claims of a token this signer issued that has not expired; None for any other."""
        if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_BYTES:
            return None
        payload, _, mac = token[len(PREFIX) :].partition(".")
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            fields = orjson.loads(_unb64(payload))
            claims = TokenClaims(str(fields["ns"]), str(fields["name"]), str(fields["uid"]), int(fields["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        return claims if claims.expires > now else None


def lifetime(requested: object) -> int:
    """The seconds a token lives for a TokenRequest's ``spec.expirationSeconds`` (ValueError saying what is wrong with it)."""
    if requested is None:
        return DEFAULT_SECONDS
    if isinstance(requested, bool) or not isinstance(requested, int):
        raise ValueError("Invalid value: must be an integer")
    if requested < MIN_SECONDS:
        raise ValueError(f"Invalid value: may not specify a duration less than {MIN_SECONDS // 60} minutes")
    return min(requested, MAX_SECONDS)
