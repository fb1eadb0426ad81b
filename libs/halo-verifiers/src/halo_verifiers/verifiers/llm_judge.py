"""llm_judge: a rubric-graded reward from any OpenAI-compatible chat endpoint or a local callable.

Spec examples::

    {"name": "llm_judge", "params": {"endpoint": "http://127.0.0.1:8000/v1", "model": "qwen2.5-7b-instruct",
                                     "rubric": "Is the answer correct and concise?", "scale_max": 10}}
    {"name": "llm_judge", "params": {"judge": "my_judge"}}   # runtime.judges["my_judge"] or "pkg.mod:function"

The judge is asked for ``{"score": <scale_min..scale_max>, "reason": "..."}``; a verdict that is
JSON, ``Score: 7``, ``7/10`` or a bare number is accepted. reward = (score - min) / (max - min).
Typed errors (reward 0, stage ``error``): ``judge_empty_verdict`` (empty content),
``judge_unparseable_verdict`` (no score, or one out of range), ``judge_request_failed`` (HTTP /
connection / timeout — never cached). The API key is read from the environment variable named by
``api_key_env``; specs never carry secrets.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import threading
from collections.abc import Callable
from typing import Any

from halo_schemas.verifiers import VerifyContext, VerifyResult, VerifyStage
from pydantic import Field, model_validator

from halo_verifiers.base import Verifier, VerifierParams
from halo_verifiers.extract import fenced_blocks, strip_reasoning
from halo_verifiers.registry import register_verifier

DEFAULT_SYSTEM = (
    "You are a strict, fair grader. Grade the RESPONSE against the RUBRIC. Reply with only a JSON object: "
    '{{"score": <number from {min} to {max}>, "reason": "<one sentence>"}}.'
)
DEFAULT_TEMPLATE = (
    "RUBRIC:\n{rubric}\n\nTASK:\n{prompt}\n\n{reference_block}RESPONSE:\n{completion}\n\n"
    "Score the RESPONSE from {min} (worst) to {max} (best)."
)
DEFAULT_RUBRIC = "Is the response correct, complete and helpful for the task?"


class JudgeError(Exception):
    """Base of the judge's typed errors; ``error_type`` goes to VerifyResult.error_type."""

    error_type = "judge_error"

    def __init__(self, message: str, raw: str | None = None) -> None:
        super().__init__(message)
        self.raw = raw


class JudgeEmptyVerdict(JudgeError):
    error_type = "judge_empty_verdict"


class JudgeUnparseableVerdict(JudgeError):
    error_type = "judge_unparseable_verdict"


class JudgeRequestFailed(JudgeError):
    error_type = "judge_request_failed"


_NUM = r"[-+]?\d+(?:\.\d+)?"


def parse_verdict(text: str | None, lo: float, hi: float) -> tuple[float, str | None]:
    """(score on the lo..hi scale, reason) from a judge's reply; raises the typed errors."""
    if text is None or not text.strip():
        raise JudgeEmptyVerdict("the judge returned an empty verdict", text)
    body = strip_reasoning(text).strip()
    if not body:
        raise JudgeEmptyVerdict("the judge's verdict contained only reasoning", text)
    score: float | None = None
    reason: str | None = None
    candidates = [b.code for b in fenced_blocks(body)] + [body]
    m = re.search(r"\{.*\}", body, re.S)
    if m:
        candidates.append(m.group(0))
    for c in candidates:
        try:
            obj = json.loads(c)
        except ValueError:
            continue
        if isinstance(obj, dict):
            for key in ("score", "rating", "grade", "reward"):
                if isinstance(obj.get(key), int | float) and not isinstance(obj.get(key), bool):
                    score = float(obj[key])
                    reason = str(obj.get("reason") or obj.get("explanation") or "") or None
                    break
                if isinstance(obj.get(key), str) and re.fullmatch(_NUM, obj[key].strip()):
                    score = float(obj[key])
                    break
        elif isinstance(obj, int | float) and not isinstance(obj, bool):
            score = float(obj)
        if score is not None:
            break
    if score is None:
        m = re.search(rf"(?i)\b(?:score|rating|grade)\b\W{{0,3}}\s*({_NUM})(?:\s*(?:/|out of)\s*({_NUM}))?", body)
        if m is None:
            m = re.search(rf"({_NUM})\s*(?:/|out of)\s*({_NUM})", body)
        if m is None:
            whole = re.fullmatch(rf"\s*({_NUM})\s*\.?\s*", body)
            if whole:
                score = float(whole.group(1))
        else:
            value = float(m.group(1))
            denom = float(m.group(2)) if m.lastindex and m.lastindex >= 2 and m.group(2) else None
            if denom:
                if not 0 <= value <= denom:
                    raise JudgeUnparseableVerdict(f"score {value:g}/{denom:g} is out of range", text)
                score = lo + (hi - lo) * value / denom
            else:
                score = value
    if score is None:
        raise JudgeUnparseableVerdict(f"no score found in the verdict: {body[:120]!r}", text)
    if not lo <= score <= hi:
        raise JudgeUnparseableVerdict(f"score {score:g} is outside [{lo:g}, {hi:g}]", text)
    return score, reason


class LlmJudgeParams(VerifierParams):
    endpoint: str | None = Field(default=None, pattern=r"^https?://", description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
    model: str | None = Field(default=None, description="Model name sent to the endpoint.")
    api_key_env: str = Field(default="OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                             description="Environment variable holding the API key (unset: a placeholder key).")
    judge: str | None = Field(default=None, description="Local judge instead of an endpoint: a name registered with "
                              "the runtime, or 'package.module:function'; called with the chat messages, returns text.")
    rubric: str | None = Field(default=None, description="Grading rubric (default: context.rubric, else a generic one).")
    scale_min: float = Field(default=0, description="Lowest score the judge may give.")
    scale_max: float = Field(default=10, description="Highest score the judge may give.")
    temperature: float = Field(default=0.0, ge=0, le=2, description="Sampling temperature (0 = cacheable).")
    max_tokens: int = Field(default=512, ge=1, le=32768, description="Verdict length limit.")
    timeout_s: float = Field(default=60.0, gt=0, le=600, description="Request timeout.")
    retries: int = Field(default=1, ge=0, le=10, description="Retries on connection errors / 5xx.")
    system_prompt: str | None = Field(default=None, description="Override of the system prompt ({min}, {max}).")
    prompt_template: str | None = Field(default=None, description="Override of the user prompt: {rubric} {prompt} "
                                        "{completion} {reference_block} {min} {max}.")
    success_threshold: float = Field(default=0.5, ge=0, le=1, description="success when reward >= this.")

    @model_validator(mode="after")
    def _one_judge(self) -> LlmJudgeParams:
        if self.judge and self.endpoint:
            raise ValueError("set either judge or endpoint, not both")
        if not self.judge and not (self.endpoint and self.model):
            raise ValueError("set endpoint and model (an OpenAI-compatible server), or judge (a local callable)")
        if self.scale_max <= self.scale_min:
            raise ValueError("scale_max must be greater than scale_min")
        return self


_clients: dict[tuple[str, str, float, int], Any] = {}
_clients_lock = threading.Lock()


def _client(endpoint: str, key: str, timeout: float, retries: int) -> Any:
    from openai import OpenAI

    k = (endpoint, key, timeout, retries)
    with _clients_lock:
        if k not in _clients:
            _clients[k] = OpenAI(base_url=endpoint, api_key=key, timeout=timeout, max_retries=retries)
        return _clients[k]


@register_verifier("llm_judge", origin="builtin")
class LlmJudgeVerifier(Verifier):
    """Rubric-graded reward from an LLM judge (OpenAI-compatible endpoint or a local callable)."""

    Params = LlmJudgeParams
    params: LlmJudgeParams
    kind = "judge"

    def cacheable(self) -> bool:
        return self.params.temperature == 0

    def messages(self, completion: str, context: VerifyContext) -> list[dict[str, str]]:
        p = self.params
        fmt = {"min": f"{p.scale_min:g}", "max": f"{p.scale_max:g}"}
        refs = ([context.reference] if context.reference else []) + list(context.references)
        reference_block = "REFERENCE ANSWER:\n" + "\n---\n".join(refs) + "\n\n" if refs else ""
        system = (p.system_prompt or DEFAULT_SYSTEM).format(**fmt)
        user = (p.prompt_template or DEFAULT_TEMPLATE).format(
            rubric=p.rubric or context.rubric or DEFAULT_RUBRIC, prompt=context.prompt or "(not given)",
            completion=completion, reference_block=reference_block, **fmt)
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def _local(self) -> Callable[..., Any]:
        name = self.params.judge or ""
        fn = self.runtime.judges.get(name)
        if fn is None and ":" in name:
            mod, _, attr = name.partition(":")
            try:
                fn = getattr(importlib.import_module(mod), attr)
            except (ImportError, AttributeError) as exc:
                raise JudgeRequestFailed(f"cannot import judge {name!r}: {exc}") from None
        if fn is None:
            raise JudgeRequestFailed(f"no local judge named {name!r} (known: {', '.join(sorted(self.runtime.judges)) or 'none'})")
        return fn

    def ask(self, messages: list[dict[str, str]]) -> str | None:
        p = self.params
        if p.judge:
            try:
                out = self._local()(messages)
            except JudgeError:
                raise
            except Exception as exc:
                raise JudgeRequestFailed(f"local judge failed: {type(exc).__name__}: {exc}") from None
            return None if out is None else str(out)
        import openai

        client = _client(p.endpoint or "", os.environ.get(p.api_key_env) or "not-needed", p.timeout_s, p.retries)
        try:
            resp = client.chat.completions.create(model=p.model, messages=messages, temperature=p.temperature,
                                                  max_tokens=p.max_tokens)
        except openai.APIError as exc:
            raise JudgeRequestFailed(f"judge request failed: {type(exc).__name__}: {exc}") from None
        except Exception as exc:  # transport problems surface as various exception types
            raise JudgeRequestFailed(f"judge request failed: {type(exc).__name__}: {exc}") from None
        if not getattr(resp, "choices", None):
            raise JudgeEmptyVerdict("the judge returned no choices")
        return resp.choices[0].message.content

    def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
        p = self.params
        raw: str | None = None
        try:
            raw = self.ask(self.messages(completion, context))
            score, reason = parse_verdict(raw, p.scale_min, p.scale_max)
        except JudgeError as exc:
            return self.error_result(exc.error_type, str(exc), details={"verdict": (exc.raw or raw or "")[:2000]})
        reward = (score - p.scale_min) / (p.scale_max - p.scale_min)
        return self.result(reward, VerifyStage.JUDGED, success=reward >= p.success_threshold,
                           details={"score": score, "reason": reason, "verdict": (raw or "")[:2000],
                                    "judge": p.judge or p.model})
