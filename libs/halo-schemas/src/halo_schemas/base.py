"""Base classes for every wire model and the schema-id registry.

Two bases, two contracts (docs/architecture.md, "Subjects and messages"):

* :class:`Message` — bus payloads. Tolerant (unknown fields ignored, so a newer producer can add an
  optional field without breaking an older consumer) and frozen.
* :class:`UserInput` — job specs, API and CLI bodies. Strict: an unknown field is an error that
  names the field, so a typo never silently becomes a default.

Each concrete model declares ``schema_id = "halo.<kind>.<name>.v<major>"``; subclassing registers
it, and :func:`model_for` resolves an id back to its class when decoding a message.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

SCHEMA_ID_RE = re.compile(r"^halo\.[a-z][a-z0-9_-]*\.[a-z][a-z0-9_.-]*\.v[0-9]+$")

_REGISTRY: dict[str, type[BaseModel]] = {}


class UnknownSchema(LookupError):
    """Raised for a schema id no registered model declares."""


class _Registered:
    schema_id: ClassVar[str] = ""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)  # type: ignore[misc]
        sid = cls.__dict__.get("schema_id")
        if not sid:
            return  # abstract intermediate base
        if not SCHEMA_ID_RE.match(sid):
            raise TypeError(f"{cls.__name__}.schema_id {sid!r} must look like halo.<kind>.<name>.v<major>")
        existing = _REGISTRY.get(sid)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise TypeError(f"schema id {sid!r} declared by both {existing.__name__} and {cls.__name__}")
        _REGISTRY[sid] = cls  # type: ignore[assignment]


class Message(_Registered, BaseModel):
    """Tolerant, frozen base for bus payloads."""

    # NaN/Infinity are real training outcomes (a diverged loss): keep them as JSON strings
    # ("NaN") that round-trip, instead of pydantic's default null that fails to decode.
    model_config = ConfigDict(extra="ignore", frozen=True, use_enum_values=False, ser_json_inf_nan="strings")


class UserInput(_Registered, BaseModel):
    """Strict base for anything a user writes: unknown fields are rejected by name."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


def model_for(schema_id: str) -> type[BaseModel]:
    """The model class registered for ``schema_id``; raises :class:`UnknownSchema`."""
    try:
        return _REGISTRY[schema_id]
    except KeyError:
        raise UnknownSchema(f"unknown schema id {schema_id!r}") from None


def registered_schemas() -> dict[str, type[BaseModel]]:
    """All registered schema ids -> model classes (a copy)."""
    return dict(sorted(_REGISTRY.items()))


def describe_validation_error(exc: ValidationError, *, what: str = "input") -> str:
    """One line per problem, naming the field path: ``lora.rank: Input should be greater than 0``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{loc}: {msg}")
    return f"invalid {what}: " + "; ".join(lines)
