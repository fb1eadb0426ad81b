"""Registry wire models: run search and detail, metric series, comparison, evaluation grid,
tags/notes/delete, cost, bundles. The replay manifest trainers write next to every run is
:mod:`halo_schemas.replay`.

Requests a user can type (CLI flags, REST query strings and bodies) are :class:`UserInput`, so a
misspelt filter is an error naming the field; replies and service-to-service payloads are
:class:`Message`. Usage from another service goes through ``halo_clients.registry.RegistryClient``.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from halo_schemas.base import Message, UserInput, utcnow
from halo_schemas.jobs import JobState

#: Plain sort fields of a run search; prefix with ``-`` for descending. ``metric.<name>`` sorts by
#: the last logged value of a metric (runs without it last).
RUN_SORT_FIELDS: tuple[str, ...] = (
    "created_at", "started_at", "finished_at", "duration_s", "name", "method", "base_model", "backend",
    "status", "last_step", "run_id",
)
#: Facets a search can count (each counted with every other filter applied).
FACET_FIELDS: tuple[str, ...] = ("status", "method", "backend", "base_model", "tag")
#: The most runs one comparison overlays.
MAX_COMPARE_RUNS = 8
#: Metrics ``compare`` overlays when none are named, in this order of preference.
DEFAULT_COMPARE_METRICS: tuple[str, ...] = ("loss", "train_loss", "reward", "reward_mean", "eval_loss")

RunId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$", description="Run id (run-…).")]
Tag = Annotated[str, Field(pattern=r"^[^\s,]{1,64}$", description="A tag: 1-64 characters, no spaces or commas.")]

_METRIC_NAME = re.compile(r"^[A-Za-z0-9_./:-]{1,128}$")


def _check_sort(value: str) -> str:
    name = value[1:] if value.startswith(("-", "+")) else value
    if name.startswith("metric."):
        if not _METRIC_NAME.match(name[len("metric."):]):
            raise PydanticCustomError("sort", "invalid metric name in sort '{value}'", {"value": value})
        return value
    if name not in RUN_SORT_FIELDS:
        raise PydanticCustomError(
            "sort", "unknown sort field '{name}' (use {known} or metric.<name>; '-' for descending)",
            {"name": name, "known": ", ".join(RUN_SORT_FIELDS)},
        )
    return value


# ---- search ----------------------------------------------------------------------------------
class RunSearch(UserInput):
    """Filters, sort and page of a run search. Every filter is optional; list filters match any
    of their values, except ``tag`` where a run must carry every tag given."""

    schema_id = "halo.rpc.runs-search.v1"

    status: list[JobState] = Field(default_factory=list, description="Run states to include (any of).")
    method: list[str] = Field(default_factory=list, description="Methods to include, e.g. sft, dpo, grpo (any of).")
    model: str | None = Field(default=None, max_length=200,
                              description="Case-insensitive substring of the base model (or any model the spec names).")
    backend: list[str] = Field(default_factory=list, description="Backends to include: cuda, rocm, mps, mlx, cpu (any of).")
    tag: list[Tag] = Field(default_factory=list, description="Tags a run must all carry.")
    text: str | None = Field(default=None, max_length=200, description="Case-insensitive substring of the run id or name.")
    since: datetime | None = Field(default=None, description="Only runs created at or after this time (UTC if naive).")
    until: datetime | None = Field(default=None, description="Only runs created before this time (UTC if naive).")
    has_eval: bool | None = Field(default=None, description="true: only runs with evaluation results; false: only without.")
    sort: str = Field(default="-created_at", description="Sort field (see RUN_SORT_FIELDS or metric.<name>); '-' prefix = descending.")
    limit: int = Field(default=50, ge=1, le=500, description="Page size.")
    offset: int = Field(default=0, ge=0, description="Rows to skip.")
    facets: bool = Field(default=False, description="Also count runs per status, method, backend, base model and tag.")

    @field_validator("sort")
    @classmethod
    def _sort_known(cls, v: str) -> str:
        return _check_sort(v)


class RunSummary(Message):
    """One run as listed by a search (the row of the runs table plus its tags and last metrics)."""

    schema_id = "halo.rpc.run-summary.v1"

    run_id: str = Field(description="Run id.")
    name: str | None = Field(default=None, description="Human-readable name from the spec, if any.")
    method: str = Field(description="Training/eval method (sft, dpo, grpo…); 'unknown' until the run's start event arrives.")
    base_model: str | None = Field(default=None, description="Base model id or path.")
    models: dict[str, str] = Field(default_factory=dict, description="Every model the spec names (base_model, ref_model, reward_model…).")
    backend: str | None = Field(default=None, description="Backend the run used.")
    status: JobState = Field(description="queued | running | succeeded | failed | cancelled.")
    job_id: str | None = Field(default=None, description="Job id that produced the run.")
    service: str | None = Field(default=None, description="Service that ran it (trainer-torch…).")
    origin: str = Field(default="local", description="local (ingested from events) or imported (from a bundle).")
    created_at: datetime = Field(description="Time of the run's earliest event (UTC).")
    started_at: datetime | None = Field(default=None, description="Start time (UTC).")
    finished_at: datetime | None = Field(default=None, description="End time (UTC).")
    duration_s: float | None = Field(default=None, description="finished_at - started_at, or up to the last event while running.")
    last_step: int | None = Field(default=None, description="Highest step with metrics.")
    total_steps: int | None = Field(default=None, description="Planned steps, when known.")
    tags: list[str] = Field(default_factory=list, description="Tags, sorted.")
    has_eval: bool = Field(default=False, description="Whether evaluation results are recorded.")
    last_metrics: dict[str, float] = Field(default_factory=dict, description="Metric name -> value at its last step.")
    error: str | None = Field(default=None, description="Failure reason of a failed run.")


class FacetCount(Message):
    """One facet value and how many matching runs have it."""

    value: str = Field(description="Facet value (a status, method, backend, model or tag).")
    count: int = Field(ge=0, description="Runs matching the other filters that have this value.")


class RunsPage(Message):
    """One page of a run search."""

    schema_id = "halo.rpc.runs-page.v1"

    items: list[RunSummary] = Field(description="The runs of this page, in sort order.")
    total: int = Field(ge=0, description="Runs matching the filters, over all pages.")
    limit: int = Field(description="Page size used.")
    offset: int = Field(description="Offset used.")
    facets: dict[str, list[FacetCount]] = Field(default_factory=dict,
                                                description="Facet name -> counts (most frequent first); empty unless asked.")


# ---- one run ---------------------------------------------------------------------------------
class RunRef(UserInput):
    """Names one run."""

    schema_id = "halo.rpc.run-ref.v1"

    run_id: RunId


class ArtifactInfo(Message):
    """A file or directory a run produced."""

    kind: str = Field(description="adapter | model | checkpoint | export | dataset | samples | other.")
    format: str = Field(description="peft | hf | gguf | mlx | jsonl | parquet | other.")
    path: str = Field(description="Path in the artifact store.")
    sha256: str | None = Field(default=None, description="Content hash, when known.")
    size_bytes: int | None = Field(default=None, description="Size in bytes, when known.")
    step: int | None = Field(default=None, description="Step it was written at.")
    created_at: datetime = Field(description="When it was recorded (UTC).")
    id: int | None = Field(default=None, description="Artifact id (halo-forge artifacts show|rm ID).")
    run_id: str | None = Field(default=None, description="Run that wrote it.")
    quant: str | None = Field(default=None, description="Quantization of an export, if any.")
    status: str | None = Field(default=None, description="verified | failed | unverified (convert/merge outputs).")
    details: dict[str, Any] = Field(default_factory=dict, description="Parents and the round-trip verify figures.")


class ArtifactSearch(UserInput):
    """Artifacts of every run, newest first, filtered."""

    schema_id = "halo.rpc.artifact-search.v1"

    kind: str | None = Field(default=None, description="adapter | model | export | checkpoint | samples…")
    format: str | None = Field(default=None, description="hf | gguf | mlx | peft…")
    status: str | None = Field(default=None, description="verified | failed | unverified.")
    run_id: str | None = Field(default=None, description="Only this run's artifacts.")
    limit: int = Field(default=50, ge=1, le=1000, description="Most rows returned.")


class ArtifactList(Message):
    schema_id = "halo.rpc.artifact-list.v1"

    artifacts: list[ArtifactInfo] = Field(default_factory=list, description="Artifacts, newest first.")


#: Artifact ids are database integers: a larger one is a 400, never a database overflow.
ARTIFACT_ID_MAX = 2**31 - 1


class ArtifactRef(UserInput):
    schema_id = "halo.rpc.artifact-ref.v1"

    id: int = Field(ge=1, le=ARTIFACT_ID_MAX, description="Artifact id.")


class ArtifactDeleteRequest(UserInput):
    """Forget an artifact; with ``keep_files=false`` also delete its file/directory (only inside HALO_HOME)."""

    schema_id = "halo.rpc.artifact-delete-request.v1"

    id: int = Field(ge=1, le=ARTIFACT_ID_MAX, description="Artifact id.")
    keep_files: bool = Field(default=True, description="Keep the file or directory on disk.")


class ArtifactDeleted(Message):
    schema_id = "halo.rpc.artifact-deleted.v1"

    id: int = Field(description="Artifact id.")
    removed_paths: list[str] = Field(default_factory=list, description="Files/directories removed.")
    kept_paths: list[str] = Field(default_factory=list, description="Paths left on disk.")


class EvalResult(Message):
    """One evaluation number: run × task × metric."""

    task: str = Field(description="Benchmark/task name, e.g. gsm8k, humaneval.")
    metric: str = Field(description="Metric name, e.g. accuracy, pass@1.")
    value: float = Field(description="The score.")
    higher_is_better: bool = Field(default=True, description="Direction used to pick the best run per task.")
    num_samples: int | None = Field(default=None, description="Examples evaluated.")
    stderr: float | None = Field(default=None, description="Standard error of the score, if computed.")
    details: dict[str, Any] = Field(default_factory=dict, description="Free-form extra information (config, split…).")
    source: str | None = Field(default=None, description="Who recorded it (eval, an import…).")
    created_at: datetime = Field(default_factory=utcnow, description="When it was recorded (UTC).")


class LineageLink(Message):
    """A parent/child relation between runs (a fork, a continuation, a distillation)."""

    parent_run_id: str = Field(description="The run the child started from.")
    child_run_id: str = Field(description="The run that started from the parent.")
    relation: str = Field(default="fork", description="fork | resume | distill | other.")
    step: int | None = Field(default=None, description="Parent step the child forked at.")
    cycle: int | None = Field(default=None, description="Parent cycle (RAFT/GRPO iteration) the child forked at.")
    created_at: datetime = Field(default_factory=utcnow, description="When the link was recorded (UTC).")


class MetricInfo(Message):
    """What is stored for one metric of a run."""

    name: str = Field(description="Metric name.")
    points: int = Field(description="Stored points.")
    first_step: int = Field(description="First step with a value.")
    last_step: int = Field(description="Last step with a value.")
    last_value: float = Field(description="Value at the last step.")
    min_value: float = Field(description="Smallest value.")
    max_value: float = Field(description="Largest value.")


class RunCostRequest(UserInput):
    """Energy and cost of a run; ``price_per_kwh`` overrides the registry's configured price."""

    schema_id = "halo.rpc.run-cost-request.v1"

    run_id: RunId
    price_per_kwh: float | None = Field(default=None, ge=0, description="Price per kWh to use (default: HALO_REGISTRY_PRICE_PER_KWH).")


class RunCost(Message):
    """Energy (kWh) and cost of a run, with where the power figure came from."""

    schema_id = "halo.rpc.run-cost.v1"

    run_id: str = Field(description="Run id.")
    source: Literal["measured", "nominal", "unknown"] = Field(
        description="measured: integrated from power_watts samples; nominal: the backend's nominal power × duration; "
                    "unknown: no duration yet.")
    kwh: float | None = Field(default=None, description="Energy in kWh.")
    cost: float | None = Field(default=None, description="kwh × price_per_kwh.")
    currency: str = Field(description="Currency of cost.")
    price_per_kwh: float = Field(description="Price used.")
    duration_s: float | None = Field(default=None, description="Duration the energy covers.")
    avg_watts: float | None = Field(default=None, description="Average power used for the figure.")
    samples: int = Field(default=0, description="Power samples integrated (0 for nominal).")
    backend: str | None = Field(default=None, description="Backend of the run.")


class RunDetail(Message):
    """Everything the registry knows about one run."""

    schema_id = "halo.rpc.run-detail.v1"

    run: RunSummary = Field(description="The run's summary row.")
    spec: dict[str, Any] = Field(default_factory=dict, description="The validated job spec.")
    summary: dict[str, Any] = Field(default_factory=dict, description="training_summary.json contents, once finished.")
    notes: str = Field(default="", description="Free-form notes.")
    metrics: list[MetricInfo] = Field(default_factory=list, description="Stored metrics.")
    artifacts: list[ArtifactInfo] = Field(default_factory=list, description="Artifacts, oldest first.")
    evals: list[EvalResult] = Field(default_factory=list, description="Evaluation results.")
    parents: list[LineageLink] = Field(default_factory=list, description="Runs this one started from.")
    children: list[LineageLink] = Field(default_factory=list, description="Runs started from this one.")
    cost: RunCost = Field(description="Energy and cost.")
    run_dir: str = Field(description="HALO_HOME/runs/<run_id> on the registry's machine.")
    has_replay: bool = Field(default=False, description="Whether run_dir holds a replay.json.")


# ---- metric series ---------------------------------------------------------------------------
class RunMetricsRequest(UserInput):
    """Metric series of one run, downsampled on the server to at most ``max_points`` per series."""

    schema_id = "halo.rpc.run-metrics-request.v1"

    run_id: RunId
    names: list[str] = Field(default_factory=list, description="Metrics to return (default: all).")
    max_points: int = Field(default=1000, ge=2, le=20000, description="Most points per series; longer series are bucketed.")
    step_min: int | None = Field(default=None, ge=0, description="First step to include.")
    step_max: int | None = Field(default=None, ge=0, description="Last step to include.")


class MetricSeries(Message):
    """One metric over steps. When ``downsampled``, each point is the mean over ``bucket_steps``
    consecutive steps starting at ``steps[i]``, with the bucket's min and max in ``mins``/``maxs``."""

    name: str = Field(description="Metric name.")
    steps: list[int] = Field(default_factory=list, description="Step of each point (first step of its bucket).")
    values: list[float] = Field(default_factory=list, description="Value (bucket mean when downsampled).")
    mins: list[float] | None = Field(default=None, description="Bucket minimum, when downsampled.")
    maxs: list[float] | None = Field(default=None, description="Bucket maximum, when downsampled.")
    points: int = Field(default=0, description="Stored points the series was computed from.")
    downsampled: bool = Field(default=False, description="True when buckets hold more than one point.")
    bucket_steps: int = Field(default=1, description="Steps per bucket.")


class RunMetrics(Message):
    """The metric series of one run."""

    schema_id = "halo.rpc.run-metrics.v1"

    run_id: str = Field(description="Run id.")
    series: list[MetricSeries] = Field(default_factory=list, description="One entry per metric, by name.")


# ---- comparison ------------------------------------------------------------------------------
class RunCompareRequest(UserInput):
    """Compare up to 8 runs: overlaid metric series plus a diff of their specs."""

    schema_id = "halo.rpc.runs-compare-request.v1"

    run_ids: list[RunId] = Field(min_length=1, max_length=MAX_COMPARE_RUNS, description="Runs to compare (1-8, distinct).")
    metrics: list[str] = Field(default_factory=list,
                               description="Metrics to overlay (default: those of loss, train_loss, reward, reward_mean, eval_loss that exist).")
    max_points: int = Field(default=500, ge=2, le=5000, description="Most points per series.")

    @field_validator("run_ids")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        dupes = sorted({r for r in v if v.count(r) > 1})
        if dupes:
            raise PydanticCustomError("distinct", "run ids given twice: {dupes}", {"dupes": ", ".join(dupes)})
        return v


class ConfigDiffRow(Message):
    """One spec key whose value differs between the compared runs."""

    key: str = Field(description="Dotted path in the spec (e.g. lora.rank), or run.<field> for run columns.")
    values: dict[str, Any] = Field(description="run_id -> value; a run without the key is absent.")


class RunComparison(Message):
    """Overlay data and config diff of several runs."""

    schema_id = "halo.rpc.runs-comparison.v1"

    runs: list[RunSummary] = Field(description="The runs, in the order asked.")
    metrics: list[str] = Field(description="Metrics overlaid.")
    series: dict[str, list[MetricSeries]] = Field(description="run_id -> its series of the overlaid metrics.")
    config_diff: list[ConfigDiffRow] = Field(description="Keys whose values differ, sorted.")
    identical_keys: int = Field(description="Keys with the same value in every run.")


# ---- evaluation ------------------------------------------------------------------------------
class EvalResultIn(Message):
    """One evaluation number to record."""

    task: str = Field(min_length=1, max_length=200, description="Task/benchmark name.")
    metric: str = Field(min_length=1, max_length=200, description="Metric name.")
    value: float = Field(description="The score (finite).")
    higher_is_better: bool = Field(default=True, description="Direction of the metric.")
    num_samples: int | None = Field(default=None, ge=0, description="Examples evaluated.")
    stderr: float | None = Field(default=None, ge=0, description="Standard error.")
    details: dict[str, Any] = Field(default_factory=dict, description="Free-form extra information.")

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise PydanticCustomError("finite", "must be a finite number")
        return v


class EvalRecordRequest(Message):
    """Record evaluation results for a run (upsert on run × task × metric)."""

    schema_id = "halo.rpc.eval-record-request.v1"

    run_id: RunId
    results: list[EvalResultIn] = Field(min_length=1, description="Results to record.")
    source: str = Field(default="eval", description="Recording service or tool.")


class EvalRecorded(Message):
    """Reply to an eval record request."""

    schema_id = "halo.rpc.eval-recorded.v1"

    run_id: str = Field(description="Run id.")
    recorded: int = Field(description="Results written (inserted or updated).")


class EvalGridRequest(UserInput):
    """A cohort evaluation grid (runs × tasks). The cohort is ``run_ids``, or else the runs a
    ``search`` matches (with evaluation results)."""

    schema_id = "halo.rpc.eval-grid-request.v1"

    run_ids: list[RunId] = Field(default_factory=list, description="Runs of the cohort.")
    search: RunSearch | None = Field(default=None, description="Select the cohort by search filters instead.")
    tasks: list[str] = Field(default_factory=list, description="Tasks to show (default: every task any run has).")
    metric: str | None = Field(default=None, description="Metric to show for every task (default: per task, the first by name).")
    limit: int = Field(default=50, ge=1, le=200, description="Most runs in the grid.")


class GridTask(Message):
    """One column of the grid and its winner."""

    task: str = Field(description="Task name.")
    metric: str = Field(description="Metric shown for it.")
    higher_is_better: bool = Field(description="Direction used to pick the best.")
    best_run_id: str | None = Field(default=None, description="Run with the best value.")
    best_value: float | None = Field(default=None, description="The best value.")


class GridCell(Message):
    """One run × task value."""

    run_id: str = Field(description="Run id.")
    task: str = Field(description="Task name.")
    metric: str = Field(description="Metric name.")
    value: float = Field(description="Score.")
    stderr: float | None = Field(default=None, description="Standard error.")
    num_samples: int | None = Field(default=None, description="Examples evaluated.")
    best: bool = Field(default=False, description="Best value of its task in this cohort.")


class EvalGrid(Message):
    """Runs × tasks with the best run per task."""

    schema_id = "halo.rpc.eval-grid.v1"

    runs: list[RunSummary] = Field(description="Rows of the grid.")
    tasks: list[GridTask] = Field(description="Columns of the grid.")
    cells: list[GridCell] = Field(description="Filled cells (a run without a task has no cell).")


# ---- mutations -------------------------------------------------------------------------------
class RunTagRequest(UserInput):
    """Add and/or remove tags of a run."""

    schema_id = "halo.rpc.run-tag-request.v1"

    run_id: RunId
    add: list[Tag] = Field(default_factory=list, description="Tags to add.")
    remove: list[Tag] = Field(default_factory=list, description="Tags to remove.")


class RunNoteRequest(UserInput):
    """Set (or append to) the notes of a run."""

    schema_id = "halo.rpc.run-note-request.v1"

    run_id: RunId
    notes: str = Field(max_length=20000, description="Text of the note.")
    append: bool = Field(default=False, description="Append as a new paragraph instead of replacing.")


class RunDeleteRequest(UserInput):
    """Delete a run from the registry; with ``keep_artifacts=false`` also its files under HALO_HOME."""

    schema_id = "halo.rpc.run-delete-request.v1"

    run_id: RunId
    keep_artifacts: bool = Field(default=True, description="Keep the run directory and artifact files on disk.")
    force: bool = Field(default=False, description="Delete even while the run is running.")


class RunDeleted(Message):
    """What a delete removed."""

    schema_id = "halo.rpc.run-deleted.v1"

    run_id: str = Field(description="Run id.")
    removed_paths: list[str] = Field(default_factory=list, description="Files/directories removed.")
    kept_paths: list[str] = Field(default_factory=list, description="Artifact paths left on disk.")


# ---- bundles ---------------------------------------------------------------------------------
class RunBundleRequest(UserInput):
    """Pack a run into one archive (spec, replay manifest, metrics, summary, evals, adapter)."""

    schema_id = "halo.rpc.run-bundle-request.v1"

    run_id: RunId
    include_adapter: bool = Field(default=True, description="Include the adapter files (can be large).")
    include_artifacts: bool = Field(
        default=False, description="Include the run's convert / merge outputs (GGUF, MLX and HF exports, baked or "
        "combined models) that still exist on disk, under artifacts/<artifact id>/ (can be very large).")


class RunBundle(Message):
    """A bundle written by the registry, ready to be downloaded."""

    schema_id = "halo.rpc.run-bundle.v1"

    run_id: str = Field(description="Run id.")
    path: str = Field(description="Bundle path on the registry's machine (HALO_HOME/bundles/…).")
    sha256: str = Field(description="sha256 of the bundle file.")
    size_bytes: int = Field(description="Size of the bundle file.")
    files: int = Field(description="Files inside (besides MANIFEST.json).")


class BundleFile(Message):
    """One file inside a bundle and its checksum."""

    path: str = Field(description="Path inside the archive (relative, forward slashes).")
    sha256: str = Field(description="sha256 of the file's bytes.")
    size_bytes: int = Field(description="Size of the file.")


class BundleManifest(Message):
    """``MANIFEST.json`` at the root of a bundle: every other member with its checksum. Import
    refuses a bundle whose members do not match it exactly."""

    schema_id = "halo.run.bundle-manifest.v1"

    format: Literal["halo-run-bundle"] = Field(default="halo-run-bundle", description="Format marker.")
    version: int = Field(default=1, description="Bundle format version.")
    run_id: str = Field(description="The bundled run.")
    created_at: datetime = Field(default_factory=utcnow, description="When the bundle was made (UTC).")
    created_by: str = Field(default="", description="Registry version and host that made it.")
    files: list[BundleFile] = Field(description="Every member except MANIFEST.json.")


class RunImportRequest(UserInput):
    """Import a bundle file readable by the registry (HALO_HOME/incoming/… when uploaded)."""

    schema_id = "halo.rpc.run-import-request.v1"

    path: str = Field(min_length=1, description="Bundle path on the registry's machine.")
    replace: bool = Field(default=False, description="Replace a run with the same id instead of refusing.")


class RunImported(Message):
    """Reply to an import."""

    schema_id = "halo.rpc.run-imported.v1"

    run_id: str = Field(description="Imported run id.")
    run: RunSummary = Field(description="The run as now listed.")
    files: int = Field(description="Files restored into the run directory.")
