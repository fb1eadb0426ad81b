"""The eval service: ``halo.job.eval.{lm-eval,probe,passk}`` and the ``check`` / ``tasks`` / ``cancel`` RPCs.

lm-eval runs on one dedicated thread (models are big; one evaluation at a time per instance keeps the
event loop free for heartbeats and checks). pass@k jobs only wait on rollout and verifier-sandbox, so
they run on the event loop itself.

Run it with ``python -m halo_eval``; in tests::

    svc = Eval(EvalSettings(home=tmp_path), InMemoryBus())
    await svc.start()
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from halo_bus import Bus, subjects
from halo_runtime import Service
from halo_schemas.eval import EvalCheckRequest, EvalTaskListRequest
from halo_schemas.jobs import JobEnvelope, JobRef
from halo_telemetry import Telemetry
from prometheus_client import CollectorRegistry

from halo_eval import __version__, handlers
from halo_eval.core.tasks import TaskIndex
from halo_eval.metrics import EvalMetrics
from halo_eval.settings import EvalSettings

T = TypeVar("T")


class Eval(Service):
    name = "eval"
    version = __version__
    description = "lm-evaluation-harness jobs, mid-training probes and pass@k benchmarks"
    settings_cls = EvalSettings

    def __init__(self, settings: EvalSettings, bus: Bus, telemetry: Telemetry | None = None) -> None:
        super().__init__(settings, bus, telemetry)
        self.settings: EvalSettings = settings
        self.metrics = EvalMetrics(telemetry.registry if telemetry else CollectorRegistry())
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-model")
        extra = [p.strip() for p in settings.include_paths.split(",") if p.strip()]
        self.index = TaskIndex(extra)
        self.running: dict[str, Any] = {}  # job id -> JobLifecycle

    async def setup(self) -> None:
        self.settings.paths.ensure()
        # lm-eval's task index takes seconds to build: start now so the first check is quick.
        self._warm = asyncio.get_running_loop().run_in_executor(None, lambda: self.index.manager)
        await self.endpoint("check", functools.partial(handlers.check, self), EvalCheckRequest)
        await self.endpoint("tasks", functools.partial(handlers.task_list, self), EvalTaskListRequest)
        await self.endpoint("cancel", functools.partial(handlers.cancel, self), JobRef)
        for job_type in subjects.EVAL_JOB_TYPES:
            await self.track(await self.bus.consume_jobs(
                subjects.job("eval", job_type), subjects.job_consumer_name("eval", job_type),
                functools.partial(handlers.run_job, self), JobEnvelope,
                ack_wait_s=self.settings.job_ack_wait_s, max_deliver=self.settings.job_max_deliver,
            ))

    async def in_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the model thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def drain(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown, True)
