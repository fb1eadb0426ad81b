"""The coordinator against a scripted trial backend (no NATS, real Optuna on SQLite): budget, pruning, grid,
resume after the coordinator dies mid-sweep (no trial submitted twice), cancel and resume.

The backend plays the trainer's part exactly as the coordinator sees it: a job per submit (deduplicated by job
id, as the work queue does), run events with a per-run sequence (history first to a new watcher, then live),
a cancel that stops the job after its current step with a ``finished: cancelled`` event. Its evaluations (an eval
objective) end like an ``lm-eval`` job of the eval service: a ``finished`` event whose summary has, per task, the
primary metric and its value (the real eval service is in tests/integration/test_sweeps_stack.py)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from halo_bus.api import EventRecord, Subscription
from halo_schemas.eval import EvalJobSpec
from halo_schemas.events import RunFinished, RunProgressed
from halo_schemas.jobs import JobState, JobStatus
from halo_schemas.sweeps import SweepSpec
from halo_schemas.training import TrainSpecBase
from halo_sweeps.core import study as st
from halo_sweeps.core.coordinator import Coordinator, SweepStopped
from halo_sweeps.core.manage import parse_sweep
from optuna.trial import TrialState

STEPS = 8


def loss_at(spec: dict[str, Any], step: int) -> float:
    """A smooth landscape: best near learning_rate 1e-2; bigger ranks help a little."""
    quality = 1.0 / (1.0 + (math.log10(spec["learning_rate"]) + 2.0) ** 2)
    rank = spec.get("lora", {}).get("rank", 16)
    return 5.0 - 4.0 * quality * step / STEPS - 0.01 * rank


def score_of(spec: dict[str, Any]) -> float:
    """The scripted evaluation's accuracy of a trained trial: best near learning_rate 1e-2."""
    return round(1.0 / (1.0 + (math.log10(spec["learning_rate"]) + 2.0) ** 2), 6)


class _Sub(Subscription):
    def __init__(self, subs: list[Any], handler: Any) -> None:
        self.subs, self.handler = subs, handler

    async def stop(self) -> None:
        if self.handler in self.subs:
            self.subs.remove(self.handler)


class ScriptedTrials:
    def __init__(self, step_s: float = 0.01) -> None:
        self.step_s = step_s
        self.submits: list[str] = []
        self.specs: dict[str, dict[str, Any]] = {}
        self.status_of: dict[str, JobStatus] = {}
        self.events: dict[str, list[EventRecord[Any]]] = {}
        self.watchers: dict[str, list[Callable[[EventRecord[Any]], Awaitable[None]]]] = {}
        self.cancelled: set[str] = set()
        self.steps_run: dict[str, int] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.eval_submits: list[str] = []
        self.eval_specs: dict[str, EvalJobSpec] = {}
        self.eval_s = step_s * 4
        self.spec_of_run: dict[str, dict[str, Any]] = {}

    async def submit(self, method: str, spec: TrainSpecBase, *, job_id: str, run_id: str) -> None:
        self.submits.append(job_id)
        if job_id in self.status_of:
            return  # the work queue drops a duplicate job id
        self.specs[job_id] = self.spec_of_run[run_id] = spec.model_dump(mode="json")
        self.status_of[job_id] = JobStatus(job_id=job_id, run_id=run_id, job_type=method, service="trainer-torch",
                                           state=JobState.QUEUED)
        self.tasks.append(asyncio.get_running_loop().create_task(self._train(job_id, run_id)))

    async def submit_eval(self, spec: EvalJobSpec, *, job_id: str, run_id: str) -> None:
        self.eval_submits.append(job_id)
        if job_id in self.status_of:
            return
        self.eval_specs[job_id] = spec
        self.status_of[job_id] = JobStatus(job_id=job_id, run_id=run_id, job_type="lm-eval", service="eval",
                                           state=JobState.RUNNING)
        self.tasks.append(asyncio.get_running_loop().create_task(self._evaluate(job_id, run_id, spec)))

    async def _evaluate(self, job_id: str, run_id: str, spec: EvalJobSpec) -> None:
        await asyncio.sleep(self.eval_s)
        trained = self.spec_of_run[spec.model.removeprefix("run:")]
        summary = {"tasks": {spec.tasks[0]: {"metric": "acc", "value": score_of(trained), "stderr": 0.1, "n": 4}}}
        self.status_of[job_id] = self.status_of[job_id].model_copy(update={"state": JobState.SUCCEEDED})
        await self._emit(run_id, RunFinished(run_id=run_id, service="eval", seq=1, state=JobState.SUCCEEDED,
                                             summary=summary))

    async def _emit(self, run_id: str, msg: Any) -> None:
        records = self.events.setdefault(run_id, [])
        record = EventRecord(subject=f"halo.evt.trainer-torch.run.{run_id}.x", message=msg, sequence=len(records) + 1)
        records.append(record)
        for handler in list(self.watchers.get(run_id, [])):
            await handler(record)

    async def _train(self, job_id: str, run_id: str) -> None:
        spec = self.specs[job_id]
        self.status_of[job_id] = self.status_of[job_id].model_copy(update={"state": JobState.RUNNING})
        for step in range(1, STEPS + 1):
            await asyncio.sleep(self.step_s)
            if job_id in self.cancelled:
                return await self._end(job_id, run_id, JobState.CANCELLED)
            self.steps_run[job_id] = step
            await self._emit(run_id, RunProgressed(run_id=run_id, service="trainer-torch", seq=step, step=step,
                                                   total_steps=STEPS, metrics={"loss": loss_at(spec, step)}))
        await self._end(job_id, run_id, JobState.SUCCEEDED)

    async def _end(self, job_id: str, run_id: str, state: JobState) -> None:
        self.status_of[job_id] = self.status_of[job_id].model_copy(update={"state": state})
        await self._emit(run_id, RunFinished(run_id=run_id, service="trainer-torch", seq=STEPS + 1, state=state))

    async def cancel(self, job_id: str) -> None:
        self.cancelled.add(job_id)

    async def status(self, job_id: str) -> JobStatus | None:
        return self.status_of.get(job_id)

    async def watch(self, run_id: str, handler: Callable[[EventRecord[Any]], Awaitable[None]]) -> Subscription:
        subs = self.watchers.setdefault(run_id, [])
        for record in list(self.events.get(run_id, [])):
            await handler(record)
        subs.append(handler)
        return _Sub(subs, handler)

    async def replay(self, run_id: str) -> list[EventRecord[Any]]:
        return list(self.events.get(run_id, []))

    async def idle(self) -> None:
        await asyncio.gather(*self.tasks)


def make(tmp_path: Path, **over: Any) -> tuple[Any, str, SweepSpec]:
    raw = {"method": "sft", "base": {"model": "tiny://llama", "data": {"train": "x.jsonl"}, "max_steps": STEPS},
           "search_space": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
                            "lora.rank": {"type": "int", "low": 2, "high": 16}},
           "sampler": "tpe", "n_trials": 8, **over}
    sweep = parse_sweep(raw)
    storage = st.open_storage(None, tmp_path)
    st.create_study(storage, "sweep-test", sweep)
    return storage, "sweep-test", sweep


async def until(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    for _ in range(int(timeout_s / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def trials_of(storage: Any) -> list[Any]:
    return storage.get_all_trials(storage.get_study_id_from_name("sweep-test"))


async def test_a_tpe_sweep_uses_its_budget_and_prunes(tmp_path: Path) -> None:
    storage, sweep_id, _ = make(tmp_path, pruning={"kind": "median", "startup_trials": 2, "warmup_steps": 3})
    backend = ScriptedTrials()
    assert await Coordinator(storage, sweep_id, backend, poll_s=0.2).run() == "done"
    trials = trials_of(storage)
    assert len(trials) == 8 and len(backend.submits) == len(set(backend.submits)) == 8
    states = [t.state for t in trials]
    assert TrialState.PRUNED in states and all(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
    for t in trials:
        job = t.user_attrs["job_id"]
        spec = backend.specs[job]
        assert spec["learning_rate"] == t.params["learning_rate"] and spec["lora"]["rank"] == t.params["lora.rank"]
        assert "sweep:sweep-test" in spec["tags"] and f"sweep-trial:{t.number}" in spec["tags"]
        if t.state == TrialState.PRUNED:  # stopped before its last step
            assert backend.steps_run[job] < STEPS and t.user_attrs["prune_requested_step"] <= backend.steps_run[job]
        else:
            assert t.value == pytest.approx(loss_at(spec, STEPS))
    complete = sorted(t.value for t in trials if t.state == TrialState.COMPLETE)
    info = st.describe(storage, sweep_id)
    assert info.best is not None and info.best.value == complete[0]
    assert info.counts["pruned"] + info.counts["complete"] == 8


async def test_grid_covers_exactly_the_grid(tmp_path: Path) -> None:
    storage, sweep_id, _ = make(tmp_path, sampler="grid", n_trials=100, search_space={
        "learning_rate": {"type": "categorical", "choices": [1e-3, 1e-2]},
        "lora.rank": {"type": "int", "low": 4, "high": 8, "step": 2}})
    backend = ScriptedTrials(step_s=0.001)
    assert await Coordinator(storage, sweep_id, backend, poll_s=0.2).run() == "done"
    points = sorted((t.params["learning_rate"], t.params["lora.rank"]) for t in trials_of(storage))
    assert points == [(1e-3, 4), (1e-3, 6), (1e-3, 8), (1e-2, 4), (1e-2, 6), (1e-2, 8)]


async def test_a_coordinator_killed_mid_sweep_resumes_without_running_a_trial_twice(tmp_path: Path) -> None:
    storage, sweep_id, _ = make(tmp_path, n_trials=6, parallel_trials=2)
    backend = ScriptedTrials(step_s=0.02)
    first = asyncio.create_task(Coordinator(storage, sweep_id, backend, poll_s=0.2).run())
    await until(lambda: len(backend.submits) >= 3)  # some finished, two running
    first.cancel()  # the coordinator dies; its trials' jobs keep running
    with pytest.raises(asyncio.CancelledError):
        await first
    # Trials left running with their jobs (a trial asked as the coordinator died may have no job yet: the next
    # coordinator abandons it and asks again).
    running = [t for t in trials_of(storage) if t.state == TrialState.RUNNING and "job_id" in t.user_attrs]
    assert running
    assert await Coordinator(storage, sweep_id, backend, poll_s=0.2).run() == "done"
    trials = trials_of(storage)
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len(backend.submits) == len(set(backend.submits)) == 6  # picked up, never resubmitted
    for t in running:  # the trials left running were finished from their own job's events
        assert t.number in {u.number for u in trials if u.value == pytest.approx(
            loss_at(backend.specs[t.user_attrs["job_id"]], STEPS))}


async def test_a_trial_recorded_but_never_queued_is_submitted_once_under_its_job_id(tmp_path: Path) -> None:
    storage, sweep_id, _ = make(tmp_path, n_trials=2)
    backend = ScriptedTrials(step_s=0.001)
    coord = Coordinator(storage, sweep_id, backend, poll_s=0.2)
    coord.study = st.load_study(storage, sweep_id)
    trial, _spec, job_id, _run = coord._ask()  # killed between recording the ids and submitting
    assert await Coordinator(storage, sweep_id, backend, poll_s=0.2).run() == "done"
    assert backend.submits.count(job_id) == 1 and len(trials_of(storage)) == 2
    assert trials_of(storage)[trial.number].state == TrialState.COMPLETE


async def test_cancel_then_resume_reruns_the_cancelled_point(tmp_path: Path) -> None:
    storage, sweep_id, _ = make(tmp_path, n_trials=3)
    backend = ScriptedTrials(step_s=0.02)
    cancelled = asyncio.Event()
    coord = Coordinator(storage, sweep_id, backend, cancelled=cancelled.is_set, poll_s=0.2)
    task = asyncio.create_task(coord.run())
    await until(lambda: bool(backend.steps_run))
    cancelled.set()
    coord.wake()
    assert await task == "cancelled"
    first = trials_of(storage)[0]
    assert first.state == TrialState.FAIL and first.user_attrs["abandoned"] is True
    await backend.idle()
    assert backend.status_of[first.user_attrs["job_id"]].state == JobState.CANCELLED
    assert await Coordinator(storage, sweep_id, backend, poll_s=0.2).run() == "done"
    trials = trials_of(storage)
    assert sum(1 for t in trials if st.counts_toward_budget(t)) == 3
    assert trials[1].params == first.params  # the abandoned point was queued again


async def test_an_eval_objective_evaluates_each_trial_and_resumes_mid_evaluation(tmp_path: Path) -> None:
    storage, sweep_id, _ = make(tmp_path, n_trials=3, sampler="random", objective={
        "metric": "eval:halo_arith_mc", "direction": "maximize", "eval": {"limit": 4}})
    backend = ScriptedTrials(step_s=0.01)
    backend.eval_s = 0.5
    first = asyncio.create_task(Coordinator(storage, sweep_id, backend, poll_s=0.2).run())
    await until(lambda: len(backend.eval_submits) == 2)  # the first trial told, the second being evaluated
    first.cancel()  # the coordinator dies while the evaluation runs
    with pytest.raises(asyncio.CancelledError):
        await first
    evaluating = [t for t in trials_of(storage) if t.state == TrialState.RUNNING]
    assert len(evaluating) == 1 and "eval_job_id" in evaluating[0].user_attrs
    assert await Coordinator(storage, sweep_id, backend, poll_s=0.2).run() == "done"
    trials = trials_of(storage)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    # One training job and one evaluation per trial: the one left evaluating was picked up, not run again.
    assert len(backend.submits) == len(set(backend.submits)) == 3
    assert len(backend.eval_submits) == len(set(backend.eval_submits)) == 3
    for t in trials:
        evaluation = backend.eval_specs[t.user_attrs["eval_job_id"]]
        assert evaluation.model == f"run:{t.user_attrs['run_id']}" and evaluation.tasks == ["halo_arith_mc"]
        assert evaluation.limit == 4 and f"sweep-eval:{sweep_id}" in evaluation.tags
        assert t.value == score_of(backend.specs[t.user_attrs["job_id"]])
    assert st.describe(storage, sweep_id).best.value == max(t.value for t in trials)  # type: ignore[union-attr]


async def test_an_eval_metric_the_task_does_not_report_stops_the_sweep(tmp_path: Path) -> None:
    storage, sweep_id, _ = make(tmp_path, n_trials=3, sampler="random", objective={
        "metric": "eval:halo_arith_mc:f1", "direction": "maximize"})
    backend = ScriptedTrials(step_s=0.001)
    with pytest.raises(SweepStopped, match="cannot read the evaluation's metrics of 'halo_arith_mc'"):
        await Coordinator(storage, sweep_id, backend, poll_s=0.2).run()
    trials = trials_of(storage)
    assert len(trials) == 1 and trials[0].state == TrialState.FAIL  # not three trials failing the same way
