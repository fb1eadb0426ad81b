"""Format verifiers: json_structure, json_schema, regex_format. In-process (no code is run)."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import jsonschema
from halo_schemas.verifiers import VerifyContext, VerifyResult, VerifyStage
from pydantic import Field, field_validator, model_validator

from halo_verifiers.base import Verifier, VerifierParams
from halo_verifiers.extract import fenced_blocks, strip_reasoning
from halo_verifiers.registry import register_verifier

JsonType = Literal["string", "number", "integer", "boolean", "array", "object", "null"]
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,), "array": (list,),
    "object": (dict,), "null": (type(None),),
}


def parse_json_completion(text: str) -> tuple[Any, str | None]:
    """The JSON value in a completion: a ```json fence, else the whole text, else the first
    balanced {...} / [...] span. Returns (value, error)."""
    cleaned = strip_reasoning(text).strip()
    candidates = [b.code for b in fenced_blocks(cleaned) if b.lang in ("json", None)]
    candidates.append(cleaned)
    for start_ch in ("{", "["):
        i = cleaned.find(start_ch)
        if i >= 0:
            candidates.append(cleaned[i:])
    last_err = "no JSON found"
    decoder = json.JSONDecoder()
    for c in candidates:
        c = c.strip()
        if not c:
            continue
        try:
            return json.loads(c), None
        except ValueError as exc:
            last_err = f"invalid JSON: {exc}"
        try:
            value, _end = decoder.raw_decode(c)
            return value, None
        except ValueError:
            pass
    return None, last_err


def _type_ok(value: Any, t: str) -> bool:
    if t in ("number", "integer") and isinstance(value, bool):
        return False
    if t == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _PY_TYPES[t])


def _lookup(doc: Any, path: str) -> tuple[bool, Any]:
    cur = doc
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return False, None
    return True, cur


class JsonStructureParams(VerifierParams):
    required_keys: list[str] = Field(default_factory=list, description="Dotted paths that must exist, e.g. 'user.name', 'items.0'.")
    key_types: dict[str, JsonType] = Field(default_factory=dict, description="Dotted path -> required JSON type.")
    root_type: JsonType | None = Field(default=None, description="Required type of the top-level value.")
    allow_extra_keys: bool = Field(default=True, description="When false, top-level keys outside required_keys/key_types fail.")
    partial_credit: bool = Field(default=True, description="0.5 + 0.5 × fraction of checks passed; else 0.5 unless all pass.")


@register_verifier("json_structure", origin="builtin")
class JsonStructureVerifier(Verifier):
    """Parses JSON (fenced or bare): 0 if not JSON, else 0.5 + 0.5 × fraction of key/type checks passed."""

    Params = JsonStructureParams
    params: JsonStructureParams
    kind = "structured"

    def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
        value, err = parse_json_completion(completion)
        if err:
            return self.result(0.0, VerifyStage.COMPILE, details={"error": err})
        checks: list[tuple[str, bool]] = []
        p = self.params
        if p.root_type:
            checks.append((f"root is {p.root_type}", _type_ok(value, p.root_type)))
        for k in p.required_keys:
            checks.append((f"has {k}", _lookup(value, k)[0]))
        for k, t in p.key_types.items():
            found, v = _lookup(value, k)
            checks.append((f"{k} is {t}", found and _type_ok(v, t)))
        if not p.allow_extra_keys and isinstance(value, dict):
            allowed = {k.split(".")[0] for k in [*p.required_keys, *p.key_types]}
            extra = sorted(set(value) - allowed)
            checks.append(("no extra keys" + (f" ({', '.join(extra[:5])})" if extra else ""), not extra))
        passed = sum(ok for _, ok in checks)
        total = len(checks)
        if total == 0 or passed == total:
            reward = 1.0
        elif p.partial_credit:
            reward = 0.5 + 0.5 * passed / total
        else:
            reward = 0.5
        details = {"checks": [{"check": c, "ok": ok} for c, ok in checks], "passed": passed, "total": total}
        return self.result(reward, VerifyStage.CORRECT if reward == 1.0 else VerifyStage.SCORED, details=details)


class JsonSchemaParams(VerifierParams):
    json_schema: dict[str, Any] | None = Field(
        default=None, description="The JSON Schema (draft 2020-12 unless $schema says otherwise); default: context.json_schema.")
    partial_credit: bool = Field(default=True, description="0.5 + 0.5 × fraction of top-level properties without errors.")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return schema


@register_verifier("json_schema", origin="builtin")
class JsonSchemaVerifier(Verifier):
    """Validates the completion's JSON against a JSON Schema: 1.0 valid, 0.5+ partly valid, 0 not JSON."""

    Params = JsonSchemaParams
    params: JsonSchemaParams
    kind = "structured"

    def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
        schema = self.params.json_schema or context.json_schema
        if schema is None:
            return self.missing_context("json_schema", "or set params.json_schema")
        try:
            validator_cls = jsonschema.validators.validator_for(schema)
            validator_cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            return self.error_result("bad_context", f"context.json_schema is not a valid JSON Schema: {exc.message}",
                                     details={"field": "context.json_schema"})
        value, err = parse_json_completion(completion)
        if err:
            return self.result(0.0, VerifyStage.COMPILE, details={"error": err})
        errors = list(validator_cls(schema).iter_errors(value))
        if not errors:
            return self.result(1.0, VerifyStage.CORRECT, details={"errors": []})
        # Partial credit: the fraction of top-level properties without errors (an unexpected extra
        # property counts as one more failed unit; an error at the root itself means none is valid).
        props = set((schema.get("properties") or {}).keys()) | set(schema.get("required") or [])
        bad: set[str] = set()
        root_fail = extra = False
        for e in errors:
            if e.absolute_path:
                bad.add(str(e.absolute_path[0]))
            elif e.validator == "required" and isinstance(value, dict):
                bad.update(k for k in e.validator_value if k not in value)
            elif e.validator == "additionalProperties":
                extra = True
            else:
                root_fail = True
        units = len(props) + (1 if extra else 0)
        rate = 0.0 if root_fail or units == 0 else len(props - bad) / units
        reward = 0.5 + 0.5 * rate if self.params.partial_credit else 0.5
        reward = min(reward, 0.99)  # invalid is never full marks
        details = {"errors": [{"path": "/".join(map(str, e.absolute_path)), "message": e.message[:300]}
                              for e in errors[:20]], "valid_fraction": round(rate, 6)}
        return self.result(reward, VerifyStage.SCORED, details=details)


class RegexParams(VerifierParams):
    pattern: str | None = Field(default=None, description="One regular expression (Python syntax).")
    patterns: list[str] = Field(default_factory=list, description="Several expressions; reward = fraction matched.")
    mode: Literal["fullmatch", "search", "match"] = Field(default="search", description="How each pattern is applied.")
    flags: list[Literal["IGNORECASE", "MULTILINE", "DOTALL", "VERBOSE", "ASCII"]] = Field(
        default_factory=list, description="re flags.")
    strip: bool = Field(default=True, description="Strip surrounding whitespace (and <think> blocks) first.")
    partial_credit: bool = Field(default=True, description="Fraction of patterns matched; else all-or-nothing.")

    @model_validator(mode="after")
    def _compile(self) -> RegexParams:
        pats = self.all_patterns()
        if not pats:
            raise ValueError("set pattern or patterns")
        for i, p in enumerate(pats):
            try:
                re.compile(p)
            except re.error as exc:
                where = "pattern" if self.pattern is not None and i == 0 else f"patterns[{i - (self.pattern is not None)}]"
                raise ValueError(f"{where} is not a valid regular expression: {exc}") from None
        return self

    def all_patterns(self) -> list[str]:
        return ([self.pattern] if self.pattern is not None else []) + list(self.patterns)


@register_verifier("regex_format", origin="builtin")
class RegexFormatVerifier(Verifier):
    """Checks the completion's format with regular expressions (fraction of patterns that match)."""

    Params = RegexParams
    params: RegexParams
    kind = "structured"

    def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
        text = strip_reasoning(completion).strip() if self.params.strip else completion
        flags = 0
        for f in self.params.flags:
            flags |= getattr(re, f)
        hits = []
        for p in self.params.all_patterns():
            fn = getattr(re.compile(p, flags), self.params.mode)
            hits.append({"pattern": p, "matched": fn(text) is not None})
        n = sum(h["matched"] for h in hits)
        total = len(hits)
        reward = n / total if self.params.partial_credit else float(n == total)
        return self.result(reward, VerifyStage.CORRECT if n == total else VerifyStage.SCORED,
                           details={"patterns": hits, "matched": n, "total": total})
