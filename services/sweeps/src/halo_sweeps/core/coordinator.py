"""The sweep coordinator: ask Optuna for trials, run each as a training job, feed it the run's events, prune.

::

    coordinator = Coordinator(storage, sweep_id, BusTrials(bus), cancelled=lambda: job.cancel_requested)
    outcome = await coordinator.run()          # "done" | "cancelled" | "stopping"

Everything durable is in Optuna's storage, so a coordinator killed at any point (kill -9 included) resumes:

* a trial's job id and run id are chosen and recorded as trial user attributes *before* the job is submitted;
  a restarted coordinator watches a running trial's job again (its events are replayed from the start) and
  never submits a second one. A recorded job that never reached the queue is submitted with the same job id
  (the work queue drops duplicates by id);
* a trial asked but not recorded (killed in between) is marked failed and ``abandoned``: it does not use the
  budget, and its point is queued again;
* a pruned trial's cancel is recorded (``prune_requested_step``) before the job is cancelled, so its end is
  told as pruned even when the coordinator restarted in between.

With an eval objective (``eval:<task>[:<metric>]``) a trial that trained is then evaluated: an ``lm-eval`` job on
the eval service over ``run:<trial run>``, its ids recorded (``eval_job_id``, ``eval_run_id``) before it is
submitted, exactly as the training job's; the trial is told the task metric from the evaluation's ``finished``
event. The trial keeps its slot (``parallel_trials``) while it is evaluated: the evaluation uses the device too.

The path from one trial's end to the next trial's submission is kept short (the sweep's overhead per trial):
the next trial is asked as soon as the ended one is told; the job route is resolved once per sweep (routing
asks the bus which trainers run, a 0.5 s discovery); the new trial's event subscription and its job submission
go out together; reporting (progress, the registry's best mark) runs in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import optuna
from halo_bus.api import EventRecord, Subscription
from halo_common.ids import new_id
from halo_schemas.eval import EvalJobSpec
from halo_schemas.events import RunFinished, RunProgressed
from halo_schemas.jobs import JobState, JobStatus
from halo_schemas.sweeps import SweepSpec
from halo_schemas.training import TrainSpecBase
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from halo_sweeps.core import study as st
from halo_sweeps.core.objective import EvalTarget, ObjectiveMissing, ObjectiveTracker, eval_target, eval_value
from halo_sweeps.core.space import apply, grid_size, method_spec, suggest

log = logging.getLogger("halo_sweeps")

Outcome = Literal["done", "cancelled", "stopping"]


class TrialBackend(Protocol):
    """How trials run: :class:`halo_sweeps.core.trials.BusTrials` submits training jobs over the bus."""

    async def submit(self, method: str, spec: TrainSpecBase, *, job_id: str, run_id: str) -> None: ...

    async def submit_eval(self, spec: EvalJobSpec, *, job_id: str, run_id: str) -> None: ...

    async def cancel(self, job_id: str) -> None: ...

    async def status(self, job_id: str) -> JobStatus | None: ...

    async def watch(self, run_id: str, handler: Callable[[EventRecord[Any]], Awaitable[None]]) -> Subscription: ...

    async def replay(self, run_id: str) -> list[EventRecord[Any]]: ...


@dataclass
class RunningTrial:
    trial: optuna.Trial
    job_id: str
    run_id: str
    tracker: ObjectiveTracker
    reported: set[int]
    prune_requested: bool = False
    seen: set[tuple[str, int]] = field(default_factory=set)
    sub: Subscription | None = None
    eval_job_id: str | None = None  # set once the trial trained and its evaluation was recorded (eval objective)
    eval_run_id: str | None = None

    @property
    def current(self) -> tuple[str, str]:
        """(job id, run id) of the phase the trial is in: its training, then its evaluation."""
        if self.eval_job_id is not None and self.eval_run_id is not None:
            return self.eval_job_id, self.eval_run_id
        return self.job_id, self.run_id


class SweepStopped(Exception):
    """The sweep cannot go on (e.g. its eval objective's metric does not exist): every trial would fail."""


def trial_tags(sweep_id: str, number: int, extra: list[str]) -> list[str]:
    """Tags of a trial's run: the registry groups a sweep's runs by ``sweep:<id>``."""
    return [*extra, f"sweep:{sweep_id}", f"sweep-trial:{number}"]


class Coordinator:
    """Drives one sweep to ``n_trials`` (see the module docstring). ``on_trial_done(frozen_trial)`` runs after
    each trial ends (progress events, marking the best run)."""

    def __init__(self, storage: optuna.storages.RDBStorage, sweep_id: str, trials: TrialBackend, *,
                 cancelled: Callable[[], bool] = lambda: False, stopping: Callable[[], bool] = lambda: False,
                 poll_s: float = 2.0,
                 on_trial_done: Callable[[FrozenTrial, optuna.Study], Awaitable[None]] | None = None) -> None:
        self.storage, self.sweep_id, self.trials = storage, sweep_id, trials
        self.cancelled, self.stopping, self.poll_s = cancelled, stopping, poll_s
        self.on_trial_done = on_trial_done
        self.sweep: SweepSpec = st.sweep_of(storage, sweep_id)
        self.spec_cls = method_spec(self.sweep.method)
        self.running: dict[int, RunningTrial] = {}
        self.queue: asyncio.Queue[tuple[int, EventRecord[Any]] | None] = asyncio.Queue()
        self.study: optuna.Study | None = None
        self.budget = self.sweep.n_trials
        if self.sweep.sampler == "grid":
            self.budget = min(self.budget, grid_size(self.sweep.search_space))
        self.eval_target: EvalTarget | None = eval_target(self.sweep.objective)
        self.used = 0  # trials that used the budget (counted from the storage at start, then kept here)
        self.background: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Make the loop look at ``cancelled`` / ``stopping`` now (thread-safe from the loop only)."""
        self.queue.put_nowait(None)

    # ---- the loop ------------------------------------------------------------------------------------
    async def run(self) -> Outcome:
        offset = len(await asyncio.to_thread(self.storage.get_all_trials,
                                             self.storage.get_study_id_from_name(self.sweep_id), False))
        self.study = await asyncio.to_thread(st.load_study, self.storage, self.sweep_id, offset=offset)
        await self._recover()
        self.used = await self._used()
        try:
            while True:
                if self.cancelled():
                    await self._cancel_all()
                    return "cancelled"
                if self.stopping():
                    return "stopping"
                if self.used >= self.budget and not self.running:
                    return "done"
                while len(self.running) < self.sweep.parallel_trials and self.used + len(self.running) < self.budget:
                    if not await self._start_trial():
                        self.used += 1  # refused by the spec: told failed, counts
                try:
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that races the get.
                    async with asyncio.timeout(self.poll_s):
                        item = await self.queue.get()
                except TimeoutError:
                    await self._poll()
                    continue
                # Everything already queued is handled as one batch: a trainer logs faster than Optuna's
                # storage answers, and the prune decision only matters at each trial's newest step.
                batch = [item]
                while not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                await self._handle_batch([i for i in batch if i is not None])
        finally:
            for run in self.running.values():
                if run.sub is not None:
                    with contextlib.suppress(Exception):
                        await run.sub.stop()
            if self.background:
                await asyncio.gather(*self.background, return_exceptions=True)

    def _later(self, work: Awaitable[None]) -> None:
        """Run ``work`` off the path to the next trial (awaited before :meth:`run` returns)."""
        task = asyncio.get_running_loop().create_task(work)  # type: ignore[arg-type]
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _used(self) -> int:
        assert self.study is not None
        trials = await asyncio.to_thread(self.study.get_trials, False)
        return sum(1 for t in trials if st.counts_toward_budget(t))

    # ---- starting and recovering trials ---------------------------------------------------------------
    def _ask(self) -> tuple[optuna.Trial, TrainSpecBase | None, str, str]:
        """(thread) Ask for a trial, build its spec and record its ids before anything is submitted."""
        assert self.study is not None
        t_ask = time.time()
        trial = self.study.ask()
        params = suggest(trial, self.sweep.search_space)
        raw = apply(self.sweep.base, params)
        raw["tags"] = trial_tags(self.sweep_id, trial.number, [*(raw.get("tags") or []), *self.sweep.tags])
        raw["name"] = f"{self.sweep.name or self.sweep_id} #{trial.number}"
        # Every logged step as an event: pruning needs the intermediate values, not a rate-limited sample.
        raw.setdefault("progress_interval_s", 0.0)
        try:
            spec = self.spec_cls.model_validate(raw)
        except ValidationError as exc:
            trial.set_user_attr(st.T_ERROR, f"the trial's spec was refused: {exc.errors()[0]['msg']}")
            self.study.tell(trial, state=TrialState.FAIL)
            return trial, None, "", ""
        job_id, run_id = new_id("job"), new_id("run")
        trial.set_user_attr(st.T_SPEC, spec.model_dump(mode="json"))
        trial.set_user_attr(st.T_RUN, run_id)
        trial.set_user_attr("t_ask", t_ask)
        trial.set_user_attr(st.T_JOB, job_id)  # last: a trial with a job id is complete on record
        return trial, spec, job_id, run_id

    async def _start_trial(self) -> bool:
        trial, spec, job_id, run_id = await asyncio.to_thread(self._ask)
        if spec is None:
            return False
        run = RunningTrial(trial, job_id, run_id, ObjectiveTracker(self.sweep.objective), set())
        # Subscribed from the run's first event, so the subscription and the submit may go out together.
        await asyncio.gather(self._watch(trial.number, run),
                             self.trials.submit(self.sweep.method, spec, job_id=job_id, run_id=run_id))
        submitted = time.time()
        await asyncio.to_thread(trial.set_user_attr, "t_submitted", submitted)
        log.info("sweep %s: trial %d submitted as %s (%s)", self.sweep_id, trial.number, job_id, trial.params)
        return True

    async def _watch(self, number: int, run: RunningTrial) -> None:
        """Feed the events of the trial's current run (training, then evaluation) to the loop."""
        async def on_event(record: EventRecord[Any]) -> None:
            self.queue.put_nowait((number, record))

        self.running[number] = run
        run.sub = await self.trials.watch(run.current[1], on_event)

    async def _recover(self) -> None:
        """Pick up the trials a previous coordinator left running (never submitting a second job)."""
        assert self.study is not None
        for t in await asyncio.to_thread(self.study.get_trials, False, (TrialState.RUNNING,)):
            job_id, run_id = t.user_attrs.get(st.T_JOB), t.user_attrs.get(st.T_RUN)
            if not job_id or not run_id:
                await asyncio.to_thread(self._abandon, t, "the coordinator stopped before submitting it")
                continue
            run = RunningTrial(optuna.trial.Trial(self.study, t._trial_id), job_id, run_id,
                               ObjectiveTracker(self.sweep.objective), set(t.intermediate_values),
                               prune_requested=st.T_PRUNE in t.user_attrs,
                               eval_job_id=t.user_attrs.get(st.T_EVAL_JOB), eval_run_id=t.user_attrs.get(st.T_EVAL_RUN))
            current_job, current_run = run.current
            status = await self.trials.status(current_job)
            if status is None and run.eval_job_id is None:  # recorded, never queued: submit it under the same id
                spec = self.spec_cls.model_validate(st.trial_spec(t))
                await self.trials.submit(self.sweep.method, spec, job_id=job_id, run_id=run_id)
            elif status is None:  # its evaluation recorded, never queued: the same
                await self.trials.submit_eval(self._eval_spec(t.number, run), job_id=current_job, run_id=current_run)
            log.info("sweep %s: picking up trial %d (job %s)", self.sweep_id, t.number, current_job)
            await self._watch(t.number, run)

    def _abandon(self, t: FrozenTrial, reason: str) -> None:
        """(thread) Fail a trial without using the budget, and queue its point again."""
        assert self.study is not None
        self.storage.set_trial_user_attr(t._trial_id, st.T_ABANDONED, True)
        self.storage.set_trial_user_attr(t._trial_id, st.T_ERROR, reason)
        self.study.tell(t.number, state=TrialState.FAIL)
        if t.params:
            self.study.enqueue_trial(dict(t.params))

    # ---- events --------------------------------------------------------------------------------------
    async def _handle(self, number: int, record: EventRecord[Any]) -> None:
        await self._handle_batch([(number, record)])

    async def _handle_batch(self, items: list[tuple[int, EventRecord[Any]]]) -> None:
        """Report new intermediate values, decide pruning once per trial at its newest step, settle ended
        trials."""
        reports: dict[int, list[tuple[int, float]]] = {}
        finished: dict[int, RunFinished] = {}
        evaluated: dict[int, RunFinished] = {}
        for number, record in items:
            run = self.running.get(number)
            msg = record.message
            run_id = getattr(msg, "run_id", None)
            if run is None or run_id is None or (run_id, record.sequence) in run.seen:
                continue
            run.seen.add((run_id, record.sequence))
            if run_id == run.eval_run_id:
                if isinstance(msg, RunFinished):
                    evaluated[number] = msg
            elif run_id != run.run_id or run.eval_run_id is not None:
                continue  # the training run of a trial already being evaluated
            elif isinstance(msg, RunProgressed):
                value = run.tracker.add(msg.step, msg.metrics)
                if value is not None and msg.step not in run.reported:
                    run.reported.add(msg.step)
                    reports.setdefault(number, []).append((msg.step, value))
            elif isinstance(msg, RunFinished):
                finished[number] = msg
        for number, values in reports.items():
            run = self.running[number]
            prune = await asyncio.to_thread(self._report, run, values, number not in finished)
            if prune is not None and not run.prune_requested:
                run.prune_requested = True
                await asyncio.to_thread(run.trial.set_user_attr, st.T_PRUNE, prune)
                log.info("sweep %s: pruning trial %d at step %d", self.sweep_id, number, prune)
                await self.trials.cancel(run.job_id)
        for number, msg in finished.items():
            if self.eval_target is not None and msg.state == JobState.SUCCEEDED:
                await self._start_eval(number)
            else:
                await self._finish(number, msg.state, msg.error)
        for number, msg in evaluated.items():
            error = None if msg.state == JobState.SUCCEEDED else f"the evaluation ended {msg.state}: {msg.error}"
            await self._finish(number, msg.state, error, evaluated=msg)

    # ---- eval objectives -----------------------------------------------------------------------------
    def _eval_spec(self, number: int, run: RunningTrial) -> EvalJobSpec:
        """The trial's evaluation: the objective's task on ``run:<trial run>``, recorded on the trial's run."""
        assert self.eval_target is not None
        opts = self.sweep.objective.eval
        options = opts.model_dump() if opts is not None else {}
        return EvalJobSpec(model=f"run:{run.run_id}", tasks=[self.eval_target.task], record=True,
                           name=f"{self.sweep.name or self.sweep_id} #{number} eval",
                           tags=[f"sweep-eval:{self.sweep_id}", f"sweep-trial:{number}"], **options)

    def _record_eval(self, run: RunningTrial, job_id: str, run_id: str) -> None:
        """(thread) Record the evaluation's ids before it is submitted (the job id last, as for a trial)."""
        run.trial.set_user_attr(st.T_EVAL_RUN, run_id)
        run.trial.set_user_attr(st.T_EVAL_JOB, job_id)

    async def _start_eval(self, number: int) -> None:
        """The trial trained: evaluate its run (it keeps its slot until the evaluation ends)."""
        run = self.running[number]
        if run.sub is not None:
            self._later(run.sub.stop())
        job_id, run_id = new_id("job"), new_id("run")
        await asyncio.to_thread(self._record_eval, run, job_id, run_id)
        run.eval_job_id, run.eval_run_id = job_id, run_id
        spec = self._eval_spec(number, run)
        await asyncio.gather(self._watch(number, run), self.trials.submit_eval(spec, job_id=job_id, run_id=run_id))
        log.info("sweep %s: trial %d trained; evaluating %s as %s", self.sweep_id, number, self.eval_target, job_id)

    def _report(self, run: RunningTrial, values: list[tuple[int, float]], may_prune: bool) -> int | None:
        """(thread) Report ``(step, value)`` pairs; the step to prune at, or None."""
        for step, value in values:
            run.trial.report(value, step)
        if not may_prune or self.sweep.pruning.kind == "none" or run.prune_requested:
            return None
        return values[-1][0] if run.trial.should_prune() else None

    async def _finish(self, number: int, state: JobState, error: str | None, *,
                      evaluated: RunFinished | None = None) -> None:
        """Tell the trial how it ended; the next trial can start right after (the rest runs in the background)."""
        run = self.running.pop(number)
        missing = await asyncio.to_thread(self._tell, run, state, error, evaluated)
        self.used += 1
        self._later(self._after(number, run))
        if missing is not None:
            await self._cancel_all()
            raise SweepStopped(missing)

    async def _after(self, number: int, run: RunningTrial) -> None:
        if run.sub is not None:
            with contextlib.suppress(Exception):
                await run.sub.stop()
        if self.on_trial_done is not None:
            assert self.study is not None
            try:
                frozen = await asyncio.to_thread(self.storage.get_trial, run.trial._trial_id)
                await self.on_trial_done(frozen, self.study)
            except Exception:  # reporting must not stop the sweep
                log.exception("sweep %s: after trial %d", self.sweep_id, number)

    def _value(self, run: RunningTrial, evaluated: RunFinished | None) -> tuple[float | None, str | None]:
        """(value, why there is none) of a trial whose job (and evaluation) succeeded."""
        if self.eval_target is None:
            value = run.tracker.value()
            return value, None if value is not None else f"the run never reported {self.sweep.objective.metric!r}"
        if evaluated is None:
            return None, "the evaluation ended without a result"
        return eval_value(evaluated.summary, self.eval_target), None

    def _tell(self, run: RunningTrial, state: JobState, error: str | None,
              evaluated: RunFinished | None = None) -> str | None:
        """(thread) Record how the trial's job (and its evaluation) ended. Returns why the sweep cannot go on
        (its objective does not exist in the evaluation), else None."""
        assert self.study is not None
        trial = run.trial
        trial.set_user_attr("t_finished_seen", time.time())
        if state == JobState.SUCCEEDED:
            try:
                value, why = self._value(run, evaluated)
            except ObjectiveMissing as exc:
                trial.set_user_attr(st.T_ERROR, str(exc))
                self.study.tell(trial, state=TrialState.FAIL)
                return str(exc)
            if value is None:
                trial.set_user_attr(st.T_ERROR, why)
                self.study.tell(trial, state=TrialState.FAIL)
            else:
                self.study.tell(trial, value)
        elif state == JobState.CANCELLED and run.prune_requested:
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            trial.set_user_attr(st.T_ERROR, error or f"the trial's job ended {state}")
            self.study.tell(trial, state=TrialState.FAIL)
        log.info("sweep %s: trial %d ended (%s)", self.sweep_id, trial.number, state)
        return None

    async def _poll(self) -> None:
        """Safety net for a lost event: a trial whose job (or evaluation) ended is settled from its replayed
        events."""
        for number, run in list(self.running.items()):
            job_id, run_id = run.current
            status = await self.trials.status(job_id)
            if status is None or not status.state.terminal:
                continue
            for record in await self.trials.replay(run_id):
                await self._handle(number, record)
            if self.running.get(number) is run and run.current[0] == job_id:
                # no finished event at all: the status decides
                await self._finish(number, status.state, status.error)

    async def _cancel_all(self) -> None:
        """The sweep was cancelled: cancel every running trial; they do not use the budget (a resume re-runs
        their points)."""
        for number, run in list(self.running.items()):
            with contextlib.suppress(Exception):
                await self.trials.cancel(run.current[0])
            if run.sub is not None:
                with contextlib.suppress(Exception):
                    await run.sub.stop()
            frozen = await asyncio.to_thread(self.storage.get_trial, run.trial._trial_id)
            await asyncio.to_thread(self._abandon, frozen, "cancelled with the sweep")
            self.running.pop(number, None)
