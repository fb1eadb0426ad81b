"""Bus-backed plugins for the core steps: verifiers through verifier-sandbox, a teacher through the rollout
service or an OpenAI-compatible URL. Core code runs in a worker thread; these hop onto the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

from halo_bus import Bus
from halo_clients import RolloutClient, VerifierClient
from halo_schemas.data import SynthesizeParams, TeacherSpec
from halo_schemas.rollout import RolloutRequest, SampleParams, SampleRequest
from halo_schemas.verifiers import VerifierSpec, VerifyContext, VerifyItem

from halo_data.core.steps import Plugins
from halo_data.core.synthesize import OpenAITeacher, Teacher, VerifyFn


class RolloutTeacher:
    """The rollout service as a teacher: one RPC per batch; a failed RPC fails every prompt of the batch (each
    counted as a teacher error)."""

    def __init__(self, bus: Bus, loop: asyncio.AbstractEventLoop, spec: TeacherSpec, params: SynthesizeParams,
                 timeout: float) -> None:
        self.client, self.loop, self.spec, self.params = RolloutClient(bus, timeout=timeout), loop, spec, params

    def generate(self, prompts: list[str], n: int) -> list[list[str] | Exception]:
        s = self.spec
        sys = [{"role": "system", "content": self.params.system}] if self.params.system else []
        reqs = [SampleRequest(messages=[*sys, {"role": "user", "content": p}]) if s.chat else SampleRequest(prompt=p)
                for p in prompts]
        req = RolloutRequest(model=s.model, requests=reqs, params=SampleParams(
            n=n, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_tokens))
        try:
            result = asyncio.run_coroutine_threadsafe(self.client.generate(req), self.loop).result()
        except Exception as exc:
            return [exc for _ in prompts]
        out: list[list[str] | Exception] = [RuntimeError("no result") for _ in prompts]
        for r in result.results:
            out[r.index] = [c.text for c in r.completions]
        return out


def plugins(bus: Bus, loop: asyncio.AbstractEventLoop, *, verify_timeout_s: float, teacher_timeout_s: float) -> Plugins:
    verifier = VerifierClient(bus)

    def verify(spec: VerifierSpec) -> VerifyFn:
        def call(items: list[tuple[str, VerifyContext]]) -> list[float]:
            batch = [VerifyItem(completion=c, context=ctx) for c, ctx in items]
            fut = asyncio.run_coroutine_threadsafe(verifier.verify_batch(spec, batch, timeout_s=verify_timeout_s), loop)
            return [r.reward for r in fut.result()]

        return call

    def teacher(spec: TeacherSpec, params: SynthesizeParams) -> Teacher:
        if spec.kind == "rollout":
            return RolloutTeacher(bus, loop, spec, params, teacher_timeout_s)
        return OpenAITeacher(spec, concurrency=params.concurrency, system=params.system)

    return Plugins(verify=verify, teacher=teacher)


__all__: list[Any] = ["RolloutTeacher", "plugins"]
