"""One registry for every verifier: built-ins, ``@register_verifier`` in code, ``*.py`` plugins in
``HALO_HOME/verifiers/``, and the ``halo_forge.verifiers`` entry-point group.

Usage::

    @register_verifier("my_check", aliases=("mine",))
    class MyCheck(Verifier): ...

    @register_verifier("starts_with_yes")          # a plain function works too
    def yes(completion, context):
        return 1.0 if completion.lower().startswith("yes") else 0.0

    REGISTRY.load_plugins(paths.verifiers_dir)     # broken plugins land in REGISTRY.problems
    verifier = REGISTRY.build(VerifierSpec(name="gcc", params={"flags": ["-O2"]}), runtime)

A plugin that fails to import, or registers a name that is taken, is reported (``problems``) and
rolled back; it never stops the service. Verifiers are configured only through their validated
``Params`` — :meth:`VerifierRegistry.build` turns a bad parameter into a :class:`BadRequest`
naming ``params.<field>``.
"""

from __future__ import annotations

import contextvars
import importlib.metadata
import importlib.util
import inspect
import logging
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halo_common.errors import BadRequest, NotFound
from halo_schemas.verifiers import (
    PluginProblem,
    VerifierInfo,
    VerifierParameter,
    VerifierSpec,
    VerifyContext,
    VerifyResult,
    VerifyStage,
)
from pydantic import ValidationError

from halo_verifiers.base import Availability, NoParams, Runtime, Verifier, VerifierParams, missing_modules

log = logging.getLogger("halo_verifiers.registry")

ENTRY_POINT_GROUP = "halo_forge.verifiers"
NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")

_origin: contextvars.ContextVar[str] = contextvars.ContextVar("verifier_origin", default="api")
# While a registry loads a plugin, @register_verifier in that plugin targets that registry.
_loading_into: contextvars.ContextVar[VerifierRegistry | None] = contextvars.ContextVar("verifier_loading_into",
                                                                                        default=None)


@dataclass
class RegistryEntry:
    name: str
    cls: type[Verifier]
    origin: str
    aliases: tuple[str, ...] = ()


@dataclass
class _LoadLog:
    names: list[str] = field(default_factory=list)


class VerifierRegistry:
    """Name -> verifier class, with origins, aliases and plugin problems. Thread-safe."""

    def __init__(self) -> None:
        self._entries: dict[str, RegistryEntry] = {}
        self._aliases: dict[str, str] = {}
        self.problems: list[PluginProblem] = []
        self._lock = threading.RLock()
        self._loading: _LoadLog | None = None

    # ---- registration ---------------------------------------------------------------------
    def register(self, name: str, cls: type[Verifier], *, origin: str | None = None,
                 aliases: tuple[str, ...] = ()) -> None:
        """Add ``cls`` under ``name`` (and ``aliases``). A name taken by another origin is refused."""
        origin = origin or _origin.get()
        for n in (name, *aliases):
            if not NAME_RE.match(n):
                raise ValueError(f"invalid verifier name {n!r}: lowercase letters, digits, '_', '.', '-'")
        if not (isinstance(cls, type) and issubclass(cls, Verifier)):
            raise TypeError(f"{cls!r} is not a Verifier subclass")
        if not (isinstance(cls.Params, type) and issubclass(cls.Params, VerifierParams)):
            raise TypeError(f"{cls.__name__}.Params must subclass VerifierParams")
        with self._lock:
            for n in (name, *aliases):
                owner = self._entries.get(self._aliases.get(n, n))
                if owner is not None and owner.origin != origin:
                    raise ValueError(f"verifier name {n!r} is already registered by {owner.origin}")
            cls.name = name
            self._entries[name] = RegistryEntry(name, cls, origin, tuple(aliases))
            for a in aliases:
                self._aliases[a] = name
            if self._loading is not None:
                self._loading.names.append(name)

    def copy(self, origins: tuple[str, ...] = ("builtin",)) -> VerifierRegistry:
        """A new registry holding this one's entries of the given origins (tests, isolated engines)."""
        new = VerifierRegistry()
        with self._lock:
            for e in self._entries.values():
                if e.origin in origins:
                    new._entries[e.name] = e
                    for a in e.aliases:
                        new._aliases[a] = e.name
        return new

    def unregister(self, name: str) -> None:
        with self._lock:
            entry = self._entries.pop(name, None)
            if entry:
                for a in entry.aliases:
                    self._aliases.pop(a, None)

    # ---- lookup ----------------------------------------------------------------------------------
    def resolve(self, name: str) -> RegistryEntry:
        """The entry for ``name`` or an alias; :class:`NotFound` naming the known verifiers."""
        with self._lock:
            entry = self._entries.get(self._aliases.get(name, name))
            if entry is None:
                known = ", ".join(sorted(self._entries))
                raise NotFound(f"unknown verifier {name!r}; registered: {known}", param="spec.name")
            return entry

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def entries(self) -> list[RegistryEntry]:
        with self._lock:
            return [self._entries[n] for n in sorted(self._entries)]

    def validate_params(self, spec: VerifierSpec) -> VerifierParams:
        """The verifier's params model for ``spec``; :class:`BadRequest` naming ``params.<field>``."""
        entry = self.resolve(spec.name)
        try:
            return entry.cls.Params.model_validate(spec.params)
        except ValidationError as exc:
            problems = []
            first = None
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                path = f"params.{loc}" if loc else "params"
                first = first or path
                msg = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
                problems.append(f"{path}: {msg}")
            raise BadRequest(f"invalid parameters for verifier {entry.name!r}: " + "; ".join(problems),
                             param=first) from None

    def build(self, spec: VerifierSpec, runtime: Runtime) -> Verifier:
        """Instantiate the verifier named by ``spec`` with validated params."""
        entry = self.resolve(spec.name)
        return entry.cls(self.validate_params(spec), runtime)

    # ---- plugins -----------------------------------------------------------------------------------
    @contextmanager
    def _loading_as(self, origin: str) -> Iterator[_LoadLog]:
        token = _origin.set(origin)
        into = _loading_into.set(self)
        with self._lock:
            prev, self._loading = self._loading, _LoadLog()
            log_ = self._loading
        try:
            yield log_
        finally:
            with self._lock:
                self._loading = prev
            _loading_into.reset(into)
            _origin.reset(token)

    def _problem(self, source: str, exc: BaseException) -> None:
        last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        where = f" ({Path(last[0].filename).name}:{last[0].lineno})" if last else ""
        msg = f"{type(exc).__name__}: {exc}{where}".replace("\n", " ")[:500]
        log.warning("verifier plugin %s failed: %s", source, msg)
        self.problems.append(PluginProblem(source=source, error=msg))

    def load_plugin_dir(self, directory: Path) -> list[str]:
        """Import every ``*.py`` in ``directory`` (not ``_*.py``); returns the names registered."""
        loaded: list[str] = []
        if not directory.is_dir():
            return loaded
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith("_"):
                continue
            origin = f"plugin:{path.name}"
            with self._loading_as(origin) as got:
                try:
                    mod_name = f"halo_verifier_plugins.{path.stem}"
                    spec = importlib.util.spec_from_file_location(mod_name, path)
                    if spec is None or spec.loader is None:
                        raise ImportError(f"cannot import {path}")
                    module = importlib.util.module_from_spec(spec)
                    sys.modules[mod_name] = module
                    spec.loader.exec_module(module)
                    if not got.names:
                        raise ValueError("registered no verifier (use @register_verifier)")
                except BaseException as exc:  # a plugin may raise anything, even SystemExit
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    for n in got.names:
                        self.unregister(n)
                    sys.modules.pop(f"halo_verifier_plugins.{path.stem}", None)
                    self._problem(str(path), exc)
                    continue
            loaded += got.names
        return loaded

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Load the ``group`` entry points. An entry point may name a Verifier class (registered under
        the entry point's name unless it registered itself), a function, or a module whose import
        registers verifiers."""
        loaded: list[str] = []
        for ep in importlib.metadata.entry_points(group=group):
            dist = getattr(getattr(ep, "dist", None), "name", None) or ep.value.split(":")[0]
            origin = f"entry-point:{dist}"
            with self._loading_as(origin) as got:
                try:
                    obj = ep.load()
                    if isinstance(obj, type) and issubclass(obj, Verifier):
                        if not any(e.cls is obj for e in self.entries()):
                            self.register(ep.name, obj, origin=origin)
                    elif callable(obj) and not inspect.ismodule(obj) and not got.names:
                        self.register(ep.name, function_verifier(obj), origin=origin)
                    if not got.names and not any(e.origin == origin for e in self.entries()):
                        raise ValueError("registered no verifier")
                except BaseException as exc:
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    for n in got.names:
                        self.unregister(n)
                    self._problem(f"{ep.name} = {ep.value}", exc)
                    continue
            loaded += got.names
        return loaded

    def load_plugins(self, directory: Path | None, group: str | None = ENTRY_POINT_GROUP) -> list[str]:
        """(Re)load plugin files and entry points, dropping what earlier loads registered."""
        with self._lock:
            for e in list(self._entries.values()):
                if e.origin.startswith(("plugin:", "entry-point:")):
                    self.unregister(e.name)
            self.problems = []
        names = self.load_plugin_dir(directory) if directory else []
        if group:
            names += self.load_entry_points(group)
        return names

    # ---- inventory ---------------------------------------------------------------------------------
    def inventory(self, runtime: Runtime) -> list[VerifierInfo]:
        """Every verifier with origin, one-line doc, parameters + JSON schema and availability."""
        out = []
        for e in self.entries():
            av = class_availability(e.cls, runtime)
            schema = e.cls.Params.model_json_schema()
            out.append(VerifierInfo(
                name=e.name, origin=e.origin, doc=first_line(e.cls.__doc__), kind=e.cls.kind, aliases=list(e.aliases),
                parameters=parameters_of(schema), params_schema=schema, available=av.ok,
                unavailable_reason=av.reason, install_hint=av.hint, sandboxed=e.cls.sandboxed,
            ))
        return out


def class_availability(cls: type[Verifier], runtime: Runtime) -> Availability:
    """Availability from the class (no params needed): Python modules, sandbox, then ``toolchains_needed``."""
    missing = missing_modules(cls)
    if missing:
        return Availability(False, f"{', '.join(missing)} not installed", cls.install_hint)
    if cls.sandboxed:
        sb = runtime.sandbox_availability()
        if not sb.ok:
            return sb
    for name in cls.toolchains_needed:
        tc = runtime.toolchains.get(name)
        if not tc.available:
            return Availability(False, f"{name} unavailable: {tc.problem}", tc.install_hint)
    return Availability(True)


def first_line(doc: str | None) -> str:
    return (inspect.cleandoc(doc).splitlines() or [""])[0].strip() if doc else ""


def _type_of(prop: dict[str, Any]) -> str:
    if "type" in prop:
        t = prop["type"]
        if t == "array" and isinstance(prop.get("items"), dict):
            return f"array[{_type_of(prop['items'])}]"
        return t if isinstance(t, str) else "|".join(t)
    if "enum" in prop:
        return "enum(" + ",".join(map(str, prop["enum"])) + ")"
    if "const" in prop:
        return f"const({prop['const']})"
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    for key in ("anyOf", "oneOf"):
        if key in prop:
            return "|".join(_type_of(p) for p in prop[key])
    return "any"


def parameters_of(schema: dict[str, Any]) -> list[VerifierParameter]:
    required = set(schema.get("required", []))
    return [
        VerifierParameter(name=name, type=_type_of(prop), required=name in required, default=prop.get("default"),
                          description=prop.get("description", ""))
        for name, prop in schema.get("properties", {}).items()
    ]


# ---- function verifiers --------------------------------------------------------------------------


def function_verifier(fn: Callable[..., Any], params: type[VerifierParams] | None = None,
                      kind: str = "custom") -> type[Verifier]:
    """Wrap ``fn(completion, context[, params])`` as a Verifier class. ``fn`` may return a float
    (reward), a bool, ``(reward, details)``, a dict with ``reward`` (+ success/details/stage) or a
    :class:`VerifyResult`. It runs in the service process: plugin code is trusted, completions are
    only data to it."""
    takes_params = len(inspect.signature(fn).parameters) >= 3

    class _FunctionVerifier(Verifier):
        Params = params or NoParams

        def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
            args = (completion, context, self.params) if takes_params else (completion, context)
            return coerce_result(self, fn(*args))

    _FunctionVerifier.kind = kind
    _FunctionVerifier.__doc__ = fn.__doc__
    _FunctionVerifier.__name__ = _FunctionVerifier.__qualname__ = f"FunctionVerifier[{fn.__name__}]"
    return _FunctionVerifier


def coerce_result(v: Verifier, out: Any) -> VerifyResult:
    """Turn what a custom function returned into a :class:`VerifyResult` (reward clamped to [0, 1])."""
    if isinstance(out, VerifyResult):
        return out.model_copy(update={"verifier": v.name})
    details: dict[str, Any] = {}
    success = None
    stage = VerifyStage.SCORED
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        out, details = out
    if isinstance(out, dict):
        if "reward" not in out:
            raise ValueError("a custom verifier's dict must contain 'reward'")
        details = dict(out.get("details") or {})
        success = out.get("success")
        if out.get("stage"):
            stage = VerifyStage(out["stage"])
        out = out["reward"]
    if isinstance(out, bool):
        out = 1.0 if out else 0.0
    if not isinstance(out, int | float):
        raise TypeError(f"a custom verifier returned {type(out).__name__}, expected a number, bool, dict or VerifyResult")
    reward = float(out)
    if reward != reward:  # NaN
        raise ValueError("a custom verifier returned NaN")
    return v.result(reward, stage, success=None if success is None else bool(success), details=details)


# ---- the default registry and decorator -------------------------------------------------------------

REGISTRY = VerifierRegistry()


def register_verifier(
    name: str,
    *,
    aliases: tuple[str, ...] = (),
    params: type[VerifierParams] | None = None,
    kind: str = "custom",
    registry: VerifierRegistry | None = None,
    origin: str | None = None,
) -> Callable[[Any], Any]:
    """Class or function decorator registering a verifier under ``name`` in ``registry``
    (default: the global one). For a function, ``params`` is its parameter model. ``origin``
    defaults to where the registration happens (``api``, ``plugin:<file>``, ``entry-point:<dist>``)."""

    def deco(obj: Any) -> Any:
        cls = obj if isinstance(obj, type) else function_verifier(obj, params, kind)
        (registry or _loading_into.get() or REGISTRY).register(name, cls, aliases=aliases, origin=origin)
        return obj

    return deco
