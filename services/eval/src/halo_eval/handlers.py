"""Bus handlers of the eval service: parse, call core, map. The logic lives in :mod:`halo_eval.core`.

* ``check`` (RPC): resolve tasks (close matches for unknown ones), the model, a pass@k dataset.
* ``tasks`` (RPC): curated groups and the offline suite.
* ``cancel`` (RPC): a queued job never starts; a running pass@k stops after its chunk; a running lm-eval
  finishes its evaluation and is then recorded as cancelled (lm-eval cannot be interrupted midway).
* ``run_job``: ``lm-eval`` | ``probe`` | ``passk`` envelopes, on the shared job lifecycle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from halo_bus import subjects
from halo_bus.api import JobDelivery
from halo_clients import RegistryClient, RolloutClient, VerifierClient
from halo_common.errors import BadRequest, HaloError, NotFound, Unavailable
from halo_runtime.jobs import JobLifecycle, admit, cancel_job, finish_without_running
from halo_schemas.base import describe_validation_error
from halo_schemas.eval import (
    EvalCheck,
    EvalCheckRequest,
    EvalJobSpec,
    EvalTaskList,
    EvalTaskListRequest,
    PassKJobSpec,
    ProbeJobSpec,
)
from halo_schemas.events import RunArtifactAdded, RunProgressed, RunStarted
from halo_schemas.jobs import JobEnvelope, JobRef, JobState, JobStatus
from halo_schemas.registry import EvalResultIn
from halo_schemas.rollout import RolloutRequest, SampleParams, SampleRequest
from halo_schemas.serve import ServeInfo, ServeInfoRequest
from pydantic import ValidationError

from halo_eval.core import lmeval, probe
from halo_eval.core.models import resolve_model
from halo_eval.core.passk import outcome_from_verifier
from halo_eval.core.passk_run import prompt_for, run_passk, stops_for
from halo_eval.core.problems import load_problems
from halo_eval.core.tasks import GROUPS, OFFLINE_TASKS, SUITE_DIR

if TYPE_CHECKING:
    from halo_eval.service import Eval

log = logging.getLogger("halo_eval")

SPECS: dict[str, type[EvalJobSpec] | type[ProbeJobSpec] | type[PassKJobSpec]] = {
    "lm-eval": EvalJobSpec, "probe": ProbeJobSpec, "passk": PassKJobSpec}


# ---- RPCs ----------------------------------------------------------------------------------------
async def check(svc: Eval, req: EvalCheckRequest) -> EvalCheck:
    def work() -> EvalCheck:
        tasks = svc.index.resolve(req.tasks) if req.tasks else []
        model = resolve_model(req.model, svc.settings.paths, req.adapter).to_json() if req.model else {}
        problems = len(load_problems(req.dataset)) if req.dataset else None
        return EvalCheck(tasks=tasks, model=model, problems=problems)

    return await asyncio.to_thread(work)


async def task_list(svc: Eval, req: EvalTaskListRequest) -> EvalTaskList:
    return EvalTaskList(groups={k: list(v) for k, v in GROUPS.items()}, offline=list(OFFLINE_TASKS),
                        suite_dir=str(SUITE_DIR))


async def cancel(svc: Eval, ref: JobRef) -> JobStatus:
    return await cancel_job(svc.bus, svc.running, ref.job_id)


# ---- helpers ------------------------------------------------------------------------------------
async def served_url(svc: Eval) -> str:
    """serve's OpenAI base URL (``…/v1``): the setting, else asked from serve."""
    if svc.settings.served_url:
        return svc.settings.served_url.rstrip("/")
    info = await svc.bus.request(subjects.SERVE_INFO, ServeInfoRequest(), ServeInfo, timeout=10.0)
    return info.url.rstrip("/") + "/v1"


async def record(svc: Eval, run_id: str, rows: list[dict[str, Any]], source: str) -> dict[str, Any]:
    """Write results on ``run_id`` in the registry, waiting briefly for the registry to know a new run.

    The numbers are already in the run dir: a registry that is down (or a run it does not know) is reported
    in the job's summary (``record_error``) instead of failing an evaluation that succeeded.
    """
    if not rows:
        return {"recorded": 0, "recorded_on": run_id}
    client = RegistryClient(svc.bus)
    results = [EvalResultIn(**r) for r in rows]
    deadline = time.monotonic() + svc.settings.record_wait_s
    while True:
        try:
            n = (await client.record_eval(run_id, results, source=source)).recorded
            return {"recorded": n, "recorded_on": run_id}
        except NotFound as exc:
            # The registry creates a run from its `started` event; it may not have ingested it yet.
            if time.monotonic() > deadline:
                return {"recorded": 0, "recorded_on": run_id, "record_error": str(exc)}
            await asyncio.sleep(0.3)
        except Unavailable as exc:
            log.warning("results of %s not recorded: %s", run_id, exc)
            return {"recorded": 0, "recorded_on": run_id, "record_error": str(exc)}


def _run_eval_dir(svc: Eval, run_id: str) -> Path:
    d = svc.settings.paths.run_dir(run_id) / "eval"
    d.mkdir(parents=True, exist_ok=True)
    return d


async def _lm_eval(svc: Eval, job: JobLifecycle, spec: EvalJobSpec | ProbeJobSpec, out_dir: Path) -> dict[str, Any]:
    ref = await asyncio.to_thread(resolve_model, spec.model, svc.settings.paths, getattr(spec, "adapter", None)) \
        if spec.backend != "served" else resolve_model_served(spec.model)
    run = lmeval.EvalRun(
        model=ref, tasks=spec.tasks, backend=spec.backend, limit=spec.limit,
        num_fewshot=getattr(spec, "num_fewshot", None), batch_size=spec.batch_size,
        device=spec.device or svc.settings.device, dtype=getattr(spec, "dtype", "auto"),
        apply_chat_template=getattr(spec, "apply_chat_template", False), seed=spec.seed,
        served_url=await served_url(svc) if spec.backend == "served" else None,
    )
    if spec.backend == "served":
        run.tokenizer = await _served_tokenizer(svc, spec.model)
    outcome = await svc.in_model_thread(lmeval.run_lm_eval, run, svc.index, out_dir)
    job.emit("artifact-added", RunArtifactAdded, kind="eval", format="json", path=str(outcome.summary_path))
    return outcome.summary


def resolve_model_served(model: str) -> lmeval.ModelRef:
    return lmeval.ModelRef(requested=model, pretrained=model, kind="served")


async def _served_tokenizer(svc: Eval, model: str) -> str | None:
    """A Hugging Face tokenizer for a served model (lm-eval splits context/continuation with it): the model's
    own directory when serve knows one in HF format, else its base's."""
    from halo_schemas.serve import ServeListRequest, ServeModelList

    models = await svc.bus.request(subjects.SERVE_LIST, ServeListRequest(), ServeModelList, timeout=10.0)
    by_id = {m.id: m for m in models.models}
    m = by_id.get(model)
    while m is not None:
        if m.path and (Path(m.path) / "tokenizer.json").is_file():
            return m.path
        if m.path and (Path(m.path) / "tokenizer_config.json").is_file():
            return m.path
        m = by_id.get(m.base) if m.base else None
    raise NotFound(f"served model {model!r}: serve has no model of that id with a Hugging Face tokenizer "
                   "(needed for loglikelihood tasks)", param="model")


def _target_run(spec: Any, env: JobEnvelope) -> str:
    if spec.record_run_id:
        return str(spec.record_run_id)
    if spec.model.startswith("run:"):
        return str(spec.model[4:])
    return env.run_id


async def _baseline(svc: Eval, spec: ProbeJobSpec) -> dict[str, probe.Score] | None:
    if spec.baseline_scores:
        return {t: probe.Score("primary", v) for t, v in spec.baseline_scores.items()}
    if not spec.baseline:
        return None
    if spec.baseline.startswith("run:"):
        detail = await RegistryClient(svc.bus).get(spec.baseline[4:])
        scores = probe.scores_from_evals([e.model_dump() for e in detail.evals])
        if not scores:
            raise BadRequest(f"baseline {spec.baseline}: the run has no evaluation results", param="baseline")
        return scores
    return await asyncio.to_thread(probe.load_baseline_file, spec.baseline)


# ---- jobs ---------------------------------------------------------------------------------------
async def run_job(svc: Eval, delivery: JobDelivery[JobEnvelope]) -> None:
    """One eval job: admit, validate, run (lm-eval / probe / passk), record, finish."""
    env = delivery.message
    worker = svc.registration.id if svc.registration else "eval"
    admission = await admit(svc.bus, env, service="eval", worker=worker, running=svc.running.keys(),
                            fresh_s=0.8 * svc.settings.job_ack_wait_s, known_types=subjects.EVAL_JOB_TYPES)
    if admission is None:
        return
    try:
        spec: Any = SPECS[env.job_type].model_validate(env.spec)
    except ValidationError as exc:
        error = describe_validation_error(exc, what=f"{env.job_type} spec")
        await finish_without_running(svc.bus, env, service="eval", previous=admission.previous,
                                     state=JobState.FAILED, error=error)
        raise BadRequest(error) from None
    job = JobLifecycle(svc.bus, env, service="eval", worker=worker, previous=admission.previous,
                       status_interval_s=max(1.0, min(5.0, svc.settings.job_ack_wait_s / 4)))
    svc.running[env.job_id] = job
    started = time.monotonic()
    out_dir = await asyncio.to_thread(_run_eval_dir, svc, env.run_id)
    (out_dir.parent / "spec.json").write_text(spec.model_dump_json(indent=2))
    await job.start()
    job.emit("started", RunStarted, method=env.job_type, base_model=spec.model,
             backend=getattr(spec, "backend", "rollout"), spec=spec.model_dump(mode="json"))
    try:
        if env.job_type == "lm-eval":
            summary = await _job_lm_eval(svc, job, env, spec, out_dir)
        elif env.job_type == "probe":
            summary = await _job_probe(svc, job, env, spec, out_dir)
        else:
            summary = await _job_passk(svc, job, env, spec, out_dir)
    except HaloError as exc:
        await _finish(svc, job, env, JobState.FAILED, started, error=str(exc), param=exc.param)
        return
    except Exception as exc:
        log.exception("eval job %s failed", env.job_id)
        await _finish(svc, job, env, JobState.FAILED, started, error=f"{type(exc).__name__}: {exc}")
        return
    state = JobState.CANCELLED if job.cancel_requested else JobState.SUCCEEDED
    await _finish(svc, job, env, state, started, summary=summary,
                  error="cancelled by request" if state == JobState.CANCELLED else None)


async def _finish(svc: Eval, job: JobLifecycle, env: JobEnvelope, state: JobState, started: float, *,
                  error: str | None = None, summary: dict[str, Any] | None = None, param: str | None = None) -> None:
    svc.running.pop(env.job_id, None)
    svc.metrics.jobs.labels(env.job_type, state.value).inc()
    svc.metrics.job_seconds.labels(env.job_type).observe(time.monotonic() - started)
    summary = {**(summary or {}), "duration_s": round(time.monotonic() - started, 3)}
    if param:
        summary["error_param"] = param
    await job.finish(state, error=error, summary=summary)


def _compact(summary: dict[str, Any]) -> dict[str, Any]:
    """The finished event's view of an lm-eval summary: per task its primary metric and value."""
    return {t: {"metric": v["primary_metric"], "value": v["value"], "stderr": v["metrics"][v["primary_metric"]]["stderr"],
                "n": v["n"]} for t, v in summary["tasks"].items()}


async def _job_lm_eval(svc: Eval, job: JobLifecycle, env: JobEnvelope, spec: EvalJobSpec, out_dir: Path) -> dict[str, Any]:
    summary = await _lm_eval(svc, job, spec, out_dir)
    rows = lmeval.eval_results(summary, {"eval_run_id": env.run_id, "model": spec.model, "backend": spec.backend})
    svc.metrics.results.labels("lm-eval").inc(len(rows))
    recorded = await record(svc, _target_run(spec, env), rows, source="eval") if spec.record else {"recorded": 0}
    return {"tasks": _compact(summary), "summary_path": str(out_dir / "lm_eval_summary.json"),
            "lm_eval_version": summary["lm_eval_version"], **recorded}


async def _job_probe(svc: Eval, job: JobLifecycle, env: JobEnvelope, spec: ProbeJobSpec, out_dir: Path) -> dict[str, Any]:
    baseline = await _baseline(svc, spec)  # before the evaluation: a bad baseline fails fast
    summary = await _lm_eval(svc, job, spec, out_dir)
    current = probe.scores_from_summary(summary)
    report = probe.compare(current, baseline, spec.tolerance) if baseline is not None else None
    if report is not None and not report.ok:
        svc.metrics.regressions.inc()
    if spec.record:
        rows = lmeval.eval_results(summary, {"eval_run_id": env.run_id, "probe_step": spec.step})
        recorded = await record(svc, _target_run(spec, env), rows, source="probe")
    result = {**(recorded if spec.record else {}), "tasks": _compact(summary), "step": spec.step,
              "probe": report.to_json() if report is not None else {"ok": True, "baseline": None}}
    (out_dir / "probe.json").write_text(json.dumps(result, indent=2))
    return result


async def _job_passk(svc: Eval, job: JobLifecycle, env: JobEnvelope, spec: PassKJobSpec, out_dir: Path) -> dict[str, Any]:
    problems = await asyncio.to_thread(load_problems, spec.dataset, spec.limit)
    verifier = VerifierClient(svc.bus, timeout_s=svc.settings.verify_timeout_s)
    given = _read_completions(spec.completions_file, spec.n) if spec.completions_file else None
    rollout = RolloutClient(svc.bus)

    async def generate(part: Any) -> list[list[str]]:
        if given is not None:
            missing = [p.task_id for p in part if p.task_id not in given]
            if missing:
                raise BadRequest(f"completions_file has no completions for {missing[0]!r}", param="completions_file")
            return [given[p.task_id] for p in part]
        req = RolloutRequest(
            model=spec.model, adapter=spec.adapter,
            params=SampleParams(n=spec.n, temperature=spec.temperature, top_p=spec.top_p,
                                max_new_tokens=spec.max_new_tokens, seed=spec.seed),
            requests=[SampleRequest(prompt=prompt_for(p), params=SampleParams(
                n=spec.n, temperature=spec.temperature, top_p=spec.top_p, max_new_tokens=spec.max_new_tokens,
                seed=spec.seed, stop=stops_for(p))) for p in part])
        result = await rollout.generate(req)
        return [[c.text for c in r.completions] for r in result.results]

    async def verify(pairs: Any) -> list[Any]:
        by_verifier: dict[str, list[int]] = {}
        for i, (p, _) in enumerate(pairs):
            by_verifier.setdefault(spec.verifier or p.verifier, []).append(i)
        out: list[Any] = [None] * len(pairs)
        for name, idx in by_verifier.items():
            results = await verifier.verify_batch(
                {"name": name, "params": spec.verifier_params},
                [(pairs[i][1], pairs[i][0].context()) for i in idx])
            for i, r in zip(idx, results, strict=True):
                out[i] = outcome_from_verifier(str(r.stage), r.success, r.details, r.error)
                svc.metrics.samples_verified.labels(out[i].reached).inc()
        return out

    def progress(done: int, total: int) -> None:
        job.update(step=done, total_steps=total)
        job.emit("progressed", RunProgressed, step=done, total_steps=total, metrics={"problems_done": float(done)})

    report, rows = await run_passk(problems, n=spec.n, ks=spec.k, generate=generate, verify=verify,
                                   chunk_size=svc.settings.passk_chunk, on_progress=progress,
                                   cancelled=lambda: job.cancel_requested)
    samples_path = out_dir / "passk_samples.jsonl"
    samples_path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data = report.to_json()
    (out_dir / "passk.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    job.emit("artifact-added", RunArtifactAdded, kind="eval", format="json", path=str(out_dir / "passk.json"))
    task = spec.dataset if spec.dataset in ("humaneval", "mbpp") else Path(spec.dataset).stem
    rows_reg = [{"task": task, "metric": f"pass@{k}", "value": v, "num_samples": len(report.problems),
                 "details": {"n": spec.n, "primary": k == report.ks[0], "eval_run_id": env.run_id}}
                for k, v in report.pass_at.items()]
    rows_reg += [{"task": task, "metric": f"stage_{s}_rate", "value": v, "num_samples": report.samples,
                  "details": {"n": spec.n, "eval_run_id": env.run_id}} for s, v in report.stage_rates.items()]
    recorded = await record(svc, _target_run(spec, env), rows_reg, source="eval") if spec.record else {"recorded": 0}
    svc.metrics.results.labels("passk").inc(len(rows_reg))
    return {"pass_at": data["pass_at"], "stage_rates": data["stage_rates"], "problems": data["problems"],
            "n": spec.n, "samples": data["samples"], "samples_path": str(samples_path), **recorded}


def _read_completions(path: str, n: int) -> dict[str, list[str]]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise NotFound(f"completions_file {path!r} does not exist", param="completions_file")
    out: dict[str, list[str]] = {}
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.setdefault(str(row["task_id"]), []).append(str(row["completion"]))
        except (ValueError, KeyError, TypeError):
            raise BadRequest(f"{p}:{lineno}: expected {{\"task_id\": …, \"completion\": …}}",
                             param="completions_file") from None
    bad = [t for t, cs in out.items() if len(cs) != n]
    if bad:
        raise BadRequest(f"{p}: task {bad[0]!r} has {len(out[bad[0]])} completions, expected n={n}",
                         param="completions_file")
    return out
