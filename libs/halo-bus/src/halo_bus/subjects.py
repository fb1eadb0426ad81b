"""Every NATS subject, stream and bucket name in Halo Forge. The ONLY place subject strings exist.

Three kinds (docs/architecture.md, "Subjects and messages"):

* request/reply ``halo.rpc.<service>.<verb>`` — core NATS, queue group = service name;
* work queue   ``halo.job.<service>.<job-type>`` — JetStream stream ``HALO_JOBS`` (WorkQueue);
* event        ``halo.evt.<service>.<entity>.<id>.<event>`` — stream ``HALO_EVENTS`` (Limits).

Services declare the subjects they serve in :data:`CATALOG` (kind, schemas, one line of doc);
``python -m halo_bus.subjects`` renders docs/messaging.md from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "halo"

SERVICES: tuple[str, ...] = (
    "gateway",
    "registry",
    "verifier-sandbox",
    "trainer-torch",
    "trainer-mlx",
    "rollout",
    "eval",
    "serve",
    "data",
    "sweeps",
)

STREAM_JOBS = "HALO_JOBS"
STREAM_EVENTS = "HALO_EVENTS"
KV_JOB_STATE = "HALO_JOB_STATE"

JOBS_WILDCARD = f"{PREFIX}.job.>"
EVENTS_WILDCARD = f"{PREFIX}.evt.>"
RUN_EVENTS_WILDCARD = f"{PREFIX}.evt.*.run.>"

_TOKEN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_ID_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def _check(token: str, what: str, pattern: re.Pattern[str] = _TOKEN) -> str:
    if not pattern.match(token):
        raise ValueError(f"invalid {what} token {token!r} for a NATS subject")
    return token


def _check_service(service: str) -> str:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; known: {', '.join(SERVICES)}")
    return service


def rpc(service: str, verb: str) -> str:
    """``halo.rpc.<service>.<verb>`` for a request/reply endpoint."""
    return f"{PREFIX}.rpc.{_check_service(service)}.{_check(verb, 'verb')}"


def job(service: str, job_type: str) -> str:
    """``halo.job.<service>.<job-type>`` work queue subject."""
    return f"{PREFIX}.job.{_check_service(service)}.{_check(job_type, 'job type')}"


def event(service: str, entity: str, entity_id: str, name: str) -> str:
    """``halo.evt.<service>.<entity>.<id>.<event>``; ``name`` is past tense (started, progressed…)."""
    return (
        f"{PREFIX}.evt.{_check_service(service)}.{_check(entity, 'entity')}."
        f"{_check(entity_id, 'id', _ID_TOKEN)}.{_check(name, 'event')}"
    )


def run_event(service: str, run_id: str, name: str) -> str:
    """Event subject for a run: ``halo.evt.<service>.run.<run_id>.<name>``."""
    return event(service, "run", run_id, name)


def run_events_filter(run_id: str) -> str:
    """Filter matching every event of one run, from any service."""
    return f"{PREFIX}.evt.*.run.{_check(run_id, 'id', _ID_TOKEN)}.*"


def runs_events_filter(name: str = "*") -> str:
    """Filter matching one event kind (``progressed``…, or ``*`` for all) of every run, from any service."""
    return f"{PREFIX}.evt.*.run.*.{name if name == '*' else _check(name, 'event')}"


def service_jobs_filter(service: str) -> str:
    return f"{PREFIX}.job.{_check_service(service)}.>"


def job_consumer_name(service: str, job_type: str) -> str:
    """Durable pull consumer name for one job type (one per type, shared by all workers)."""
    return f"{_check_service(service)}-{_check(job_type, 'job type')}".replace("_", "-")


def matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: ``*`` is one token, a trailing ``>`` is one or more tokens."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


@dataclass(frozen=True)
class SubjectDoc:
    """One documented subject for docs/messaging.md."""

    kind: str  # "rpc" | "job" | "event"
    subject: str
    request: str  # schema id (or "-")
    reply: str  # schema id (or "-")
    doc: str


CATALOG: list[SubjectDoc] = []


def declare(kind: str, subject: str, request: str, reply: str, doc: str) -> str:
    """Record a subject in the catalog (idempotent) and return it."""
    entry = SubjectDoc(kind, subject, request, reply, doc)
    if entry not in CATALOG:
        CATALOG.append(entry)
    return subject


def _service_rpcs(service: str) -> None:
    declare("rpc", rpc(service, "health"), "halo.rpc.health-request.v1", "halo.rpc.service-health.v1",
            f"Health of a {service} instance (queue group: one instance answers).")


for _svc in SERVICES:
    _service_rpcs(_svc)

declare("rpc", "$SRV.INFO", "-", "NATS micro info", "NATS micro discovery: every instance answers with its endpoints.")
declare("rpc", "$SRV.PING", "-", "NATS micro ping", "NATS micro liveness of every instance.")
declare("rpc", "$SRV.STATS", "-", "NATS micro stats", "Per-endpoint request/error counts and latency.")
declare("event", f"{PREFIX}.evt.<service>.run.<run_id>.started", "halo.evt.run-started.v1", "-", "A run began (or resumed).")
declare("event", f"{PREFIX}.evt.<service>.run.<run_id>.progressed", "halo.evt.run-progressed.v1", "-",
        "Metrics at a step, emitted at a bounded rate.")
declare("event", f"{PREFIX}.evt.<service>.run.<run_id>.checkpointed", "halo.evt.run-checkpointed.v1", "-",
        "A checkpoint was written.")
declare("event", f"{PREFIX}.evt.<service>.run.<run_id>.artifact-added", "halo.evt.run-artifact-added.v1", "-",
        "An artifact (adapter, model, checkpoint, export) was written.")
declare("event", f"{PREFIX}.evt.<service>.run.<run_id>.finished", "halo.evt.run-finished.v1", "-",
        "The run ended: succeeded, failed or cancelled, with its summary.")

# --- per-service subjects -------------------------------------------------------------------
# Each service owns one block below. Add a verb with declare(...) so docs/messaging.md lists it.

# gateway: no subjects of its own (HTTP edge).

# registry
REGISTRY_QUERY_RUNS = declare("rpc", rpc("registry", "runs-search"), "halo.rpc.runs-search.v1", "halo.rpc.runs-page.v1",
                              "Search runs with filters, sort, pagination and facets.")
REGISTRY_RUN_GET = declare("rpc", rpc("registry", "run-get"), "halo.rpc.run-ref.v1", "halo.rpc.run-detail.v1",
                           "One run: spec, summary, metrics, artifacts, evals, lineage, cost.")
REGISTRY_RUN_METRICS = declare("rpc", rpc("registry", "run-metrics"), "halo.rpc.run-metrics-request.v1",
                               "halo.rpc.run-metrics.v1", "Metric series of a run, downsampled on the server.")
REGISTRY_RUNS_COMPARE = declare("rpc", rpc("registry", "runs-compare"), "halo.rpc.runs-compare-request.v1",
                                "halo.rpc.runs-comparison.v1", "Overlay series and config diff of up to 8 runs.")
REGISTRY_EVAL_GRID = declare("rpc", rpc("registry", "eval-grid"), "halo.rpc.eval-grid-request.v1", "halo.rpc.eval-grid.v1",
                             "Cohort evaluation grid: runs x tasks, best run per task.")
REGISTRY_EVAL_RECORD = declare("rpc", rpc("registry", "eval-record"), "halo.rpc.eval-record-request.v1",
                               "halo.rpc.eval-recorded.v1", "Record evaluation results (run x task x metric, upsert).")
REGISTRY_RUN_TAG = declare("rpc", rpc("registry", "run-tag"), "halo.rpc.run-tag-request.v1", "halo.rpc.run-summary.v1",
                           "Add/remove tags of a run.")
REGISTRY_RUN_NOTE = declare("rpc", rpc("registry", "run-note"), "halo.rpc.run-note-request.v1", "halo.rpc.run-summary.v1",
                            "Set or append the notes of a run.")
REGISTRY_RUN_DELETE = declare("rpc", rpc("registry", "run-delete"), "halo.rpc.run-delete-request.v1",
                              "halo.rpc.run-deleted.v1", "Delete a run; keep or remove its artifacts.")
REGISTRY_RUN_COST = declare("rpc", rpc("registry", "run-cost"), "halo.rpc.run-cost-request.v1", "halo.rpc.run-cost.v1",
                            "Energy (kWh) and cost of a run, measured or nominal.")
REGISTRY_RUN_BUNDLE = declare("rpc", rpc("registry", "run-bundle"), "halo.rpc.run-bundle-request.v1",
                              "halo.rpc.run-bundle.v1", "Pack a run into a checksummed bundle under HALO_HOME/bundles.")
REGISTRY_RUN_IMPORT = declare("rpc", rpc("registry", "run-import"), "halo.rpc.run-import-request.v1",
                              "halo.rpc.run-imported.v1", "Import a bundle file; refuses a tampered or malformed one.")
REGISTRY_RUN_REPLAY = declare("rpc", rpc("registry", "run-replay"), "halo.rpc.run-ref.v1", "halo.rpc.run-replay.v1",
                              "The replay manifest of a run and its launch command.")
REGISTRY_DATASET_REGISTER = declare("rpc", rpc("registry", "dataset-register"), "halo.rpc.dataset-register-request.v1",
                                     "halo.registry.dataset.v1", "Record a dataset file (path, rows, sha256, recipe, parents).")
REGISTRY_DATASET_GET = declare("rpc", rpc("registry", "dataset-get"), "halo.rpc.dataset-ref.v1", "halo.registry.dataset.v1",
                               "One dataset by id (dataset:<id> in a training spec resolves through it).")
REGISTRY_DATASET_LIST = declare("rpc", rpc("registry", "dataset-list"), "halo.rpc.dataset-list-request.v1",
                                "halo.rpc.dataset-list.v1", "Datasets, newest first, by name or run.")
REGISTRY_ARTIFACTS = declare("rpc", rpc("registry", "artifacts-search"), "halo.rpc.artifact-search.v1",
                             "halo.rpc.artifact-list.v1", "Artifacts of every run (exports, merges…), newest first, filtered.")
REGISTRY_ARTIFACT_GET = declare("rpc", rpc("registry", "artifact-get"), "halo.rpc.artifact-ref.v1",
                                "halo.rpc.artifact-list.v1", "One artifact by id: format, quant, status, verify figures.")
REGISTRY_ARTIFACT_DELETE = declare("rpc", rpc("registry", "artifact-delete"), "halo.rpc.artifact-delete-request.v1",
                                   "halo.rpc.artifact-deleted.v1", "Forget an artifact; optionally delete its files.")
REGISTRY_INGEST_DURABLE = "registry-ingest"  # durable JetStream consumer of RUN_EVENTS_WILDCARD

# verifier-sandbox
VERIFY = declare("rpc", rpc("verifier-sandbox", "verify"), "halo.rpc.verify-request.v1", "halo.rpc.verify-result.v1",
                 "Run one verifier on one completion.")
VERIFY_BATCH = declare("rpc", rpc("verifier-sandbox", "verify-batch"), "halo.rpc.verify-batch-request.v1",
                       "halo.rpc.verify-batch-result.v1", "Run a verifier on many completions; order preserved.")
VERIFIER_INVENTORY = declare("rpc", rpc("verifier-sandbox", "inventory"), "halo.rpc.inventory-request.v1",
                             "halo.rpc.verifier-inventory.v1", "List registered verifiers and their parameters.")

# trainer-torch
TRAINER_TORCH_JOB_TYPES = ("sft", "dpo", "orpo", "rm", "grpo", "raft")
for _jt in TRAINER_TORCH_JOB_TYPES:
    declare("job", job("trainer-torch", _jt), "halo.job.envelope.v1", "-", f"Run a {_jt.upper()} training job.")
TRAINER_TORCH_CANCEL = declare("rpc", rpc("trainer-torch", "cancel"), "halo.rpc.job-ref.v1", "halo.job.status.v1",
                               "Request cancellation of a running or queued job.")
TRAINER_TORCH_PREVIEW = declare("rpc", rpc("trainer-torch", "preview"), "halo.rpc.training-preview-request.v1",
                                "halo.rpc.training-preview-result.v1",
                                "Dry run: validate a training spec and its data, render samples with trained vs masked tokens.")

# rollout
ROLLOUT_GENERATE = declare("rpc", rpc("rollout", "generate"), "halo.rpc.rollout-request.v1", "halo.rpc.rollout-result.v1",
                           "Sample n completions per prompt (small batches); results name the weights version used.")
ROLLOUT_LOAD = declare("rpc", rpc("rollout", "load"), "halo.rpc.rollout-load-request.v1", "halo.rpc.rollout-loaded.v1",
                       "Load a model (+ adapter) into the rollout cache, or re-read updated weights from disk.")
ROLLOUT_JOB = declare("job", job("rollout", "generate"), "halo.job.envelope.v1", "-",
                      "Large rollout (spec halo.spec.rollout-job.v1): JSONL of completions under the run dir.")

# serve
SERVE_LOAD = declare("rpc", rpc("serve", "load"), "halo.rpc.serve-load-request.v1", "halo.rpc.serve-model.v1",
                     "Register a model id (base, adapter, GGUF, MLX, run:<id>) and load it now.")
SERVE_UNLOAD = declare("rpc", rpc("serve", "unload"), "halo.rpc.serve-unload-request.v1", "halo.rpc.serve-model-list.v1",
                       "Unload a model (a base with its adapters); optionally forget its id.")
SERVE_LIST = declare("rpc", rpc("serve", "list"), "halo.rpc.serve-list-request.v1", "halo.rpc.serve-model-list.v1",
                     "Every servable model id: base, format, backend, loaded, memory.")
SERVE_INFO = declare("rpc", rpc("serve", "info"), "halo.rpc.serve-info-request.v1", "halo.rpc.serve-info.v1",
                     "Where serve's OpenAI-compatible HTTP API listens (the gateway proxies /v1 there).")
SERVE_JOB_TYPES = ("convert", "merge-bake", "merge-combine")
SERVE_CONVERT_JOB = declare("job", job("serve", "convert"), "halo.job.envelope.v1", "-",
                            "Export a model to hf | gguf | mlx x quant (spec halo.job.convert.v1), round-trip verified.")
SERVE_MERGE_BAKE_JOB = declare("job", job("serve", "merge-bake"), "halo.job.envelope.v1", "-",
                               "Bake one adapter into its base (spec halo.job.merge-bake.v1).")
SERVE_MERGE_COMBINE_JOB = declare("job", job("serve", "merge-combine"), "halo.job.envelope.v1", "-",
                                  "Combine N adapters (spec halo.job.merge-combine.v1), optionally baked.")
SERVE_CONVERT_FORMATS = declare("rpc", rpc("serve", "convert-formats"), "halo.rpc.convert-formats-request.v1",
                                "halo.rpc.convert-formats.v1", "The (format, quant) pairs this serve host can export.")
SERVE_CANCEL = declare("rpc", rpc("serve", "cancel"), "halo.rpc.job-ref.v1", "halo.job.status.v1",
                       "Request cancellation of a queued or running convert/merge job.")
SERVE_MODEL_EVENTS = declare("event", f"{PREFIX}.evt.serve.model.<model>.<loaded|unloaded|adapter-loaded>",
                             "halo.evt.serve-model.v1", "-",
                             "A model was loaded, unloaded (requested, evicted, shutdown) or an adapter attached.")

# eval
EVAL_JOB_TYPES = ("lm-eval", "probe", "passk")
EVAL_LM_EVAL_JOB = declare("job", job("eval", "lm-eval"), "halo.job.envelope.v1", "-",
                           "lm-evaluation-harness tasks on a model (spec halo.spec.eval.v1); results to run dir + registry.")
EVAL_PROBE_JOB = declare("job", job("eval", "probe"), "halo.job.envelope.v1", "-",
                         "Short evaluation diffed against a baseline (spec halo.spec.probe.v1); lists regressed tasks.")
EVAL_PASSK_JOB = declare("job", job("eval", "passk"), "halo.job.envelope.v1", "-",
                         "pass@k via rollout + verifier-sandbox (spec halo.spec.passk.v1), stages per sample.")
EVAL_CHECK = declare("rpc", rpc("eval", "check"), "halo.rpc.eval-check-request.v1", "halo.rpc.eval-check.v1",
                     "Resolve task names (close matches for unknown ones), the model and a pass@k dataset.")
EVAL_TASKS = declare("rpc", rpc("eval", "tasks"), "halo.rpc.eval-task-list-request.v1", "halo.rpc.eval-task-list.v1",
                     "Curated task groups and the built-in offline suite.")
EVAL_CANCEL = declare("rpc", rpc("eval", "cancel"), "halo.rpc.job-ref.v1", "halo.job.status.v1",
                      "Request cancellation of a running or queued eval job.")

# trainer-mlx (same verbs as trainer-torch, so TrainerClient(bus, service="trainer-mlx") works)
TRAINER_MLX_JOB_TYPES = ("sft", "dpo", "orpo", "rm", "grpo", "raft")
for _jt in TRAINER_MLX_JOB_TYPES:
    declare("job", job("trainer-mlx", _jt), "halo.job.envelope.v1", "-", f"Run a {_jt.upper()} training job on MLX.")
TRAINER_MLX_CANCEL = declare("rpc", rpc("trainer-mlx", "cancel"), "halo.rpc.job-ref.v1", "halo.job.status.v1",
                             "Request cancellation of a running or queued MLX job.")
TRAINER_MLX_PREVIEW = declare("rpc", rpc("trainer-mlx", "preview"), "halo.rpc.training-preview-request.v1",
                              "halo.rpc.training-preview-result.v1",
                              "Dry run on MLX: validate a spec (refusing what MLX cannot honour) and render samples.")

# data
DATA_JOB_TYPES = ("data-synthesize", "data-dedup", "data-score", "data-filter", "data-decontaminate", "data-recipe")
for _jt in DATA_JOB_TYPES:
    declare("job", job("data", _jt), "halo.job.envelope.v1", "-",
            f"Data pipeline step {_jt.removeprefix('data-')} (spec halo.spec.{_jt}.v1); output registered as a dataset.")
DATA_INSPECT = declare("rpc", rpc("data", "inspect"), "halo.rpc.data-inspect-request.v1", "halo.rpc.data-inspect.v1",
                       "Counts, formats, length histogram and samples of a data file.")
DATA_CANCEL = declare("rpc", rpc("data", "cancel"), "halo.rpc.job-ref.v1", "halo.job.status.v1",
                      "Request cancellation of a running or queued data job.")

# sweeps
SWEEPS_JOB = declare("job", job("sweeps", "sweep"), "halo.job.envelope.v1", "-",
                     "Coordinate one sweep (spec halo.spec.sweep-job.v1): trials are training jobs; Optuna storage "
                     "next to the registry's database.")
SWEEPS_CREATE = declare("rpc", rpc("sweeps", "create"), "halo.rpc.sweep-create-request.v1", "halo.rpc.sweep-started.v1",
                        "Validate a sweep (search space, objective) and start its coordinator job.")
SWEEPS_LIST = declare("rpc", rpc("sweeps", "list"), "halo.rpc.sweep-list-request.v1", "halo.rpc.sweep-list.v1",
                      "Sweeps, newest first, with trial counts and the best value.")
SWEEPS_SHOW = declare("rpc", rpc("sweeps", "show"), "halo.rpc.sweep-ref.v1", "halo.sweeps.sweep.v1",
                      "One sweep: trials, best trial, parameter importances.")
SWEEPS_CANCEL = declare("rpc", rpc("sweeps", "cancel"), "halo.rpc.job-ref.v1", "halo.job.status.v1",
                        "Cancel a sweep's coordinator job (it cancels its running trials).")
SWEEPS_RESUME = declare("rpc", rpc("sweeps", "resume"), "halo.rpc.sweep-ref.v1", "halo.rpc.sweep-started.v1",
                        "Start a new coordinator for a cancelled or failed sweep; finished trials are kept.")
SWEEPS_BEST = declare("rpc", rpc("sweeps", "best"), "halo.rpc.sweep-ref.v1", "halo.rpc.sweep-best.v1",
                      "The best complete trial and its full training spec.")
SWEEPS_FORK_BEST = declare("rpc", rpc("sweeps", "fork-best"), "halo.rpc.sweep-fork-request.v1",
                           "halo.rpc.sweep-forked.v1", "Submit a full training run from the best trial's spec.")


def render_messaging_md() -> str:
    """docs/messaging.md, generated from this module."""
    lines = [
        "# Messaging",
        "",
        "Generated by `python -m halo_bus.subjects > docs/messaging.md` from `libs/halo-bus/src/halo_bus/subjects.py`;",
        "a test fails when this file is stale.",
        "",
        "| stream / bucket | subjects | retention |",
        "|---|---|---|",
        f"| `{STREAM_JOBS}` | `{JOBS_WILDCARD}` | WorkQueue, file storage; one durable pull consumer per job type |",
        f"| `{STREAM_EVENTS}` | `{EVENTS_WILDCARD}` | Limits (max age 30 days), file storage; replayable per run |",
        f"| KV `{KV_JOB_STATE}` | job id -> `halo.job.status.v1` | latest value per job |",
        "",
        "Headers set by halo-bus: `Halo-Schema` on every message, `Nats-Msg-Id` on jobs and events (deduplication),"
        " `traceparent` (W3C) when tracing is on. A reply is paired with its request by the reply inbox. RPC errors"
        " use NATS micro's `Nats-Service-Error` / `Nats-Service-Error-Code` with HTTP-like codes.",
        "",
        "| kind | subject | request | reply | what |",
        "|---|---|---|---|---|",
    ]
    for e in sorted(CATALOG, key=lambda e: (e.kind, e.subject)):
        lines.append(f"| {e.kind} | `{e.subject}` | `{e.request}` | `{e.reply}` | {e.doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_messaging_md(), end="")
