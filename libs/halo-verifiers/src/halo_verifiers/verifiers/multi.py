"""multi (alias auto): detect the completion's language and route to the right verifier.

Language: params.language, else context.language, else the code fence tag, else detection
(:func:`~halo_verifiers.extract.detect_language`). Default routes (each overridable by
``params.routes[<language>] = {"name": ..., "params": {...}}``):

==========  =========================================================================
c           gcc
cpp         gcc (language cpp)
rust        cargo when context.tests is set, else rust
go          go
python      humaneval (context.entry_point + tests), mbpp (tests is a list),
            pytest (tests is a module), else execution (python)
json        json_schema when context.json_schema is set, else json_structure
==========  =========================================================================
"""

from __future__ import annotations

from typing import Any

from halo_common.errors import BadRequest
from halo_schemas.verifiers import VerifierSpec, VerifyContext, VerifyResult
from pydantic import Field

from halo_verifiers.base import Availability, Runtime, Verifier, VerifierParams
from halo_verifiers.extract import extract_code, normalize_language
from halo_verifiers.registry import register_verifier


class Route(VerifierParams):
    name: str = Field(pattern=r"^[a-z][a-z0-9_.-]*$", description="Verifier to route to.")
    params: dict[str, Any] = Field(default_factory=dict, description="Its parameters.")


class MultiParams(VerifierParams):
    language: str | None = Field(default=None, description="Force a language instead of detecting it.")
    default_language: str | None = Field(default=None, description="Language when detection finds none.")
    routes: dict[str, Route] = Field(default_factory=dict, description="language -> verifier spec overriding the defaults.")


def default_route(lang: str | None, context: VerifyContext) -> Route | None:
    tests = context.tests
    if lang == "c":
        return Route(name="gcc", params={"language": "c"})
    if lang == "cpp":
        return Route(name="gcc", params={"language": "cpp"})
    if lang == "rust":
        return Route(name="cargo") if isinstance(tests, str) and tests.strip() else Route(name="rust")
    if lang == "go":
        return Route(name="go")
    if lang == "python":
        if context.entry_point and isinstance(tests, str) and "def check" in tests:
            return Route(name="humaneval")
        if isinstance(tests, list):
            return Route(name="mbpp")
        if isinstance(tests, str) and tests.strip():
            return Route(name="pytest")
        return Route(name="execution", params={"language": "python"})
    if lang == "json":
        return Route(name="json_schema") if context.json_schema else Route(name="json_structure")
    return None


@register_verifier("multi", aliases=("auto",), origin="builtin")
class MultiVerifier(Verifier):
    """Detects the completion's language and routes to gcc / rust / cargo / go / python verifiers."""

    Params = MultiParams
    params: MultiParams
    kind = "meta"

    def __init__(self, params: MultiParams, runtime: Runtime) -> None:
        super().__init__(params, runtime)
        # Validate overriding routes now, so a bad one is a 400 on the spec, not a per-item error.
        for lang, route in params.routes.items():
            if route.name in ("multi", "auto"):
                raise BadRequest(f"params.routes.{lang}: cannot route to multi", param=f"params.routes.{lang}")
            runtime.registry.validate_params(VerifierSpec(name=route.name, params=route.params))

    def route(self, completion: str, context: VerifyContext) -> tuple[str | None, Route | None]:
        lang = normalize_language(self.params.language) or normalize_language(context.language)
        if lang is None:
            lang = extract_code(completion).language
        lang = lang or normalize_language(self.params.default_language)
        if lang is None:
            return None, None
        return lang, self.params.routes.get(lang) or default_route(lang, context)

    def inner(self, completion: str, context: VerifyContext) -> tuple[str | None, Verifier | None]:
        lang, route = self.route(completion, context)
        if route is None:
            return lang, None
        return lang, self.runtime.registry.build(VerifierSpec(name=route.name, params=route.params), self.runtime)

    def availability(self, context: VerifyContext | None = None) -> Availability:
        return Availability(True)  # checked per routed verifier

    def cacheable(self) -> bool:
        return True

    def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
        lang, inner = self.inner(completion, context)
        if inner is None:
            return self.error_result("unknown_language", f"cannot route: language {lang or 'not detected'}; set "
                                     "context.language or params.language", details={"language": lang})
        av = inner.availability(context)
        res = inner.verify(completion, context) if av.ok else inner.unavailable(av)
        meta = {**res.metadata, "routed_to": inner.name, "language": lang}
        return res.model_copy(update={"verifier": self.name, "metadata": meta})

