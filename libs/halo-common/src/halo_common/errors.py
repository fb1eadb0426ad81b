"""One error type for the whole system.

A :class:`HaloError` carries an HTTP-like status ``code`` so it can be mapped once per edge:
raised in a handler -> NATS micro error headers on the bus -> HTTP/OpenAI error JSON at the
gateway -> a one-line message and non-zero exit in the CLI.
"""

from __future__ import annotations

from typing import Any, ClassVar


class HaloError(Exception):
    """Base error. ``code`` is HTTP-like (400, 403, 404, 409, 422, 500, 503).

    ``param`` names the offending field or argument when there is one, so a user sees exactly
    what to fix. ``type`` is the OpenAI-style error type string.
    """

    code: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The error JSON body used everywhere: ``{"error": {message, type, param, code}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    @staticmethod
    def from_code(code: int, message: str, *, param: str | None = None) -> HaloError:
        """Rebuild the most specific error class for a status code (used when decoding the bus)."""
        cls = _BY_CODE.get(code, HaloError)
        err = cls(message, param=param)
        if cls is HaloError:
            err.code = code  # type: ignore[misc]
        return err

    def __str__(self) -> str:
        return f"{self.message} (param: {self.param})" if self.param else self.message


class BadRequest(HaloError):
    """Malformed input: unknown field, wrong type, unknown schema id."""

    code = 400
    type = "invalid_request_error"


class Forbidden(HaloError):
    """Refused by the host's policy, not because of how the request is written (e.g. a spec asks to run
    a model's own code while ``HALO_ALLOW_REMOTE_CODE`` is off). ``param`` names the refused field."""

    code = 403
    type = "permission_error"


class NotFound(HaloError):
    code = 404
    type = "not_found_error"


class Conflict(HaloError):
    code = 409
    type = "conflict_error"


class Unprocessable(HaloError):
    """Well-formed but cannot be done here, e.g. an option this backend does not support."""

    code = 422
    type = "unprocessable_error"


class Internal(HaloError):
    code = 500
    type = "internal_error"


class Unavailable(HaloError):
    """A dependency (NATS, a service, a toolchain) is not reachable right now."""

    code = 503
    type = "unavailable_error"


_BY_CODE: dict[int, type[HaloError]] = {
    c.code: c for c in (BadRequest, Forbidden, NotFound, Conflict, Unprocessable, Internal, Unavailable)
}
