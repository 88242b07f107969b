"""Kubernetes ``Status`` errors as values.

Every API error fleetsync returns (simulator or hub) is an :class:`ApiError`, which
renders as the ``Status`` object real Kubernetes clients know how to read: ``kubectl``
prints its ``message``, client libraries map ``code``/``reason`` to exceptions.
"""

from __future__ import annotations

from typing import Any

from fleetsync.errors import FleetsyncError


def status_body(message: str, *, status: str = "Failure", reason: str = "", code: int | None = None, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one Kubernetes ``Status`` object fleetsync sends: an error's body, a watch's ERROR
    event, or a delete's ``Success`` (``reason``, ``code`` and ``details`` only when given)."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": status, "message": message}
    if reason:
        body["reason"] = reason
    if code is not None:
        body["code"] = code
    if details:
        body["details"] = details
    return body


class ApiError(FleetsyncError):
    """An API failure with its HTTP code, Kubernetes reason and a message a user can act on."""

    def __init__(self, code: int, reason: str, message: str, *, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}  # sent with the response (e.g. WWW-Authenticate)

    def to_status(self) -> dict[str, Any]:
        return status_body(self.message, reason=self.reason, code=self.code, details=self.details)

    # Constructors named after the Kubernetes reasons (k8s.io/apimachinery/pkg/api/errors).

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "BadRequest", message)

    @classmethod
    def unauthorized(cls, message: str = "Unauthorized") -> ApiError:
        return cls(401, "Unauthorized", message)

    @classmethod
    def forbidden(cls, message: str) -> ApiError:
        return cls(403, "Forbidden", message)

    @classmethod
    def not_found(cls, resource: str, name: str, group: str = "") -> ApiError:
        qualified = f"{resource}.{group}" if group else resource
        return cls(404, "NotFound", f'{qualified} "{name}" not found', details={"name": name, "group": group, "kind": resource})

    @classmethod
    def path_not_found(cls, path: str) -> ApiError:
        return cls(404, "NotFound", f"the server could not find the requested resource (path {path})")

    @classmethod
    def method_not_allowed(cls, method: str, what: str) -> ApiError:
        return cls(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource ({method} {what})")

    @classmethod
    def already_exists(cls, resource: str, name: str, group: str = "") -> ApiError:
        qualified = f"{resource}.{group}" if group else resource
        return cls(409, "AlreadyExists", f'{qualified} "{name}" already exists', details={"name": name, "group": group, "kind": resource})

    @classmethod
    def conflict(cls, resource: str, name: str, why: str, group: str = "") -> ApiError:
        qualified = f"{resource}.{group}" if group else resource
        return cls(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {qualified} "{name}": {why}',
            details={"name": name, "group": group, "kind": resource},
        )

    @classmethod
    def gone(cls, message: str) -> ApiError:
        return cls(410, "Expired", message)

    @classmethod
    def unsupported_media_type(cls, content_type: str) -> ApiError:
        return cls(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted media types include: {content_type}")

    @classmethod
    def invalid(cls, kind: str, name: str, causes: list[tuple[str, str]], group: str = "") -> ApiError:
        """422 Invalid; ``causes`` are (field, message) pairs."""
        text = "; ".join(f"{f}: {m}" for f, m in causes) or "invalid object"
        return cls(
            422,
            "Invalid",
            f'{kind} "{name}" is invalid: {text}',
            details={
                "name": name,
                "group": group,
                "kind": kind,
                "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
            },
        )
