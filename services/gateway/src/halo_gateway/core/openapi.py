"""The gateway's OpenAPI document, made to say what the API really does.

FastAPI's generated document lists a 422 with its own validation schema on every operation; the gateway
never answers that way (a malformed request is a 400 with the error JSON). :func:`install_openapi`
replaces those entries with the errors each operation can return — all in the one error shape
``{"error": {message, type, param, code}}`` — and declares the bearer token scheme.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from halo_gateway.core.security import PUBLIC_PATHS, STATE_CHANGING

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "description": "Every error the API returns.",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {
            "message": {"type": "string", "description": "What went wrong and how to fix it."},
            "type": {"type": "string", "description": "Error type, e.g. invalid_request_error, not_found_error."},
            "param": {"type": ["string", "null"], "description": "The offending field or header, when there is one."},
            "code": {"type": "integer", "description": "The HTTP status code again."},
        },
    }},
}

#: Status -> description, for every operation (the Host check and the bus can refuse any of them).
ALWAYS = {
    "400": "Bad request: a field, parameter or the Host header is invalid (param names it).",
    "500": "Internal error.",
    "503": "A service this route needs is not running or did not answer.",
}
PROTECTED = {"401": "Missing or invalid bearer token.", "404": "No such resource (param names the id)."}
#: Only state-changing operations (POST/PUT/PATCH/DELETE).
CHANGING = {
    "403": "Refused by policy: a cross-origin browser request, or a spec the host does not allow.",
    "409": "Conflicts with the current state (e.g. the resource already exists).",
    "415": "The body's Content-Type is not one this route takes.",
    "422": "Well-formed but not processable here: unreadable data (file:line), a capability this backend lacks.",
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
#: Operations whose body is a file, not JSON, when the route does not declare it itself:
#: (method, path) -> media types (``halo-forge runs import`` sends application/gzip). The security
#: middleware accepts exactly the types the document declares.
RAW_BODY_ROUTES: dict[tuple[str, str], tuple[str, ...]] = {
    ("post", "/api/v1/runs/import"): ("application/gzip", "application/x-gzip", "application/octet-stream",
                                      "application/x-tar"),
}
SECURITY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "Required on every route but /health when the gateway is bound to a non-loopback address, "
                   "when HALO_GATEWAY_TOKEN is set, or when tokens exist (`halo-forge tokens create`).",
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def rewrite(doc: dict[str, Any]) -> dict[str, Any]:
    """Replace FastAPI's 422 validation responses (never sent: a malformed request is a 400) by the error
    responses the API really sends, in the one error shape; add the bearer scheme. Returns ``doc``."""
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses = op["responses"]
            raw = RAW_BODY_ROUTES.get((method, path))
            if raw and "requestBody" not in op:
                op["requestBody"] = {"required": True, "content": {t: _BINARY for t in raw}}
            responses.pop("422", None)
            wanted = dict(ALWAYS)
            if path in PUBLIC_PATHS:
                op["security"] = []  # health stays open for probes
            else:
                wanted |= PROTECTED
            if method.upper() in STATE_CHANGING:
                wanted |= CHANGING
            for code, description in wanted.items():
                responses.setdefault(code, _error(description))
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["Error"] = ERROR_SCHEMA
    components.setdefault("securitySchemes", {})["bearerAuth"] = SECURITY_SCHEME
    doc["security"] = [{"bearerAuth": []}]
    return doc


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and ``/openapi.json``) return the rewritten document, built once."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = rewrite(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
