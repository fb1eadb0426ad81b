"""Events of training runs for tests: :class:`RunEmitter` plays a trainer, emitting the events of one run
(``halo_schemas.events``) with increasing ``seq`` and deterministic timestamps, and says on which subject and
with which dedup id a trainer publishes each.

Usage::

    from halo_testing import RunEmitter, loss_at

    em = RunEmitter(method="sft", spec={"tags": ["t"]})
    events = [em.started(total_steps=3), *(em.progressed(s, loss=loss_at(s)) for s in (1, 2, 3)), em.finished()]
    for ev in events:
        await bus.publish_event(em.subject(ev), ev, msg_id=em.msg_id(ev))
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from halo_bus import subjects
from halo_common.ids import new_id
from halo_schemas.events import (
    RunArtifactAdded,
    RunCheckpointed,
    RunEvent,
    RunFinished,
    RunProgressed,
    RunStarted,
)
from halo_schemas.jobs import JobState

__all__ = ["T0", "RunEmitter", "loss_at"]

T0 = datetime(2026, 1, 1, tzinfo=UTC)

_EVENT_NAMES = {RunStarted: "started", RunProgressed: "progressed", RunCheckpointed: "checkpointed",
                RunArtifactAdded: "artifact-added", RunFinished: "finished"}


class RunEmitter:
    """Events of one run, as a trainer would emit them: ``seq`` increases, event time is
    ``t0 + step * step_s`` (start at ``t0``, finish after the last step)."""

    def __init__(self, run_id: str | None = None, *, service: str = "trainer-torch", method: str = "sft",
                 base_model: str | None = "tiny-llama", backend: str | None = "cpu", spec: dict[str, Any] | None = None,
                 t0: datetime = T0, step_s: float = 1.0, job_id: str | None = None) -> None:
        self.run_id = run_id or new_id("run")
        self.job_id = job_id or new_id("job")
        self.service, self.method, self.base_model, self.backend = service, method, base_model, backend
        self.spec = spec if spec is not None else {"lr": 1e-4, "epochs": 1}
        self.t0, self.step_s = t0, step_s
        self._seq = itertools.count()
        self.last_step = 0

    def at(self, step: float) -> datetime:
        return self.t0 + timedelta(seconds=step * self.step_s)

    def _common(self, ts: datetime) -> dict[str, Any]:
        return {"run_id": self.run_id, "job_id": self.job_id, "service": self.service, "seq": next(self._seq), "ts": ts}

    def started(self, *, total_steps: int | None = None, resumed_from_step: int | None = None,
                at_step: float = 0) -> RunStarted:
        return RunStarted(**self._common(self.at(at_step)), method=self.method, base_model=self.base_model,
                          backend=self.backend, spec=self.spec, total_steps=total_steps,
                          resumed_from_step=resumed_from_step)

    def progressed(self, step: int, total_steps: int | None = None, **metrics: float) -> RunProgressed:
        self.last_step = max(self.last_step, step)
        return RunProgressed(**self._common(self.at(step)), step=step, total_steps=total_steps, metrics=metrics)

    def checkpointed(self, step: int, path: str) -> RunCheckpointed:
        return RunCheckpointed(**self._common(self.at(step)), step=step, path=path)

    def artifact(self, path: str, *, kind: str = "adapter", format: str = "peft", step: int | None = None,
                 sha256: str | None = None, size_bytes: int | None = None) -> RunArtifactAdded:
        return RunArtifactAdded(**self._common(self.at(step if step is not None else self.last_step)), kind=kind,
                                format=format, path=path, step=step, sha256=sha256, size_bytes=size_bytes)

    def finished(self, state: JobState | str = JobState.SUCCEEDED, *, summary: dict[str, Any] | None = None,
                 error: str | None = None, at_step: float | None = None) -> RunFinished:
        ts = self.at(self.last_step + 1 if at_step is None else at_step)
        return RunFinished(**self._common(ts), state=JobState(state), summary=summary or {}, error=error)

    def subject(self, ev: RunEvent) -> str:
        """The subject a trainer publishes ``ev`` on."""
        return subjects.run_event(ev.service, ev.run_id, _EVENT_NAMES[type(ev)])

    @staticmethod
    def msg_id(ev: RunEvent) -> str:
        """The dedup id a trainer gives ``ev`` (run id + seq)."""
        return f"{ev.run_id}:{ev.seq}"


def loss_at(step: int) -> float:
    """A deterministic falling loss curve."""
    return round(3.0 / (1.0 + 0.01 * step), 6)
