"""Run events (``halo.evt.<service>.run.<run_id>.<event>``), past tense, replayable per run."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from halo_schemas.base import Message, utcnow
from halo_schemas.jobs import JobState


class RunEvent(Message):
    """Fields every run event has. ``seq`` increases per run so consumers can dedup and order."""

    run_id: str = Field(description="Run id.")
    job_id: str | None = Field(default=None, description="Job id that produced the event.")
    service: str = Field(description="Emitting service.")
    seq: int = Field(ge=0, description="Per-run sequence number, strictly increasing.")
    ts: datetime = Field(default_factory=utcnow, description="UTC emission time.")


class RunStarted(RunEvent):
    schema_id = "halo.evt.run-started.v1"

    method: str = Field(description="Training/eval method, e.g. 'sft', 'dpo', 'grpo'.")
    base_model: str | None = Field(default=None, description="Base model id or path.")
    backend: str | None = Field(default=None, description="Backend the run uses (cuda, rocm, mps, mlx, cpu).")
    spec: dict[str, Any] = Field(default_factory=dict, description="The validated job spec.")
    total_steps: int | None = Field(default=None, description="Planned optimizer steps, when known.")
    resumed_from_step: int | None = Field(default=None, description="Step resumed from, if a resume.")


class RunProgressed(RunEvent):
    schema_id = "halo.evt.run-progressed.v1"

    step: int = Field(ge=0, description="Optimizer step the metrics belong to.")
    total_steps: int | None = Field(default=None, description="Planned steps, when known.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Metric name -> value at this step.")


class RunCheckpointed(RunEvent):
    schema_id = "halo.evt.run-checkpointed.v1"

    step: int = Field(ge=0, description="Step of the checkpoint.")
    path: str = Field(description="Checkpoint directory (artifact store path).")


class RunArtifactAdded(RunEvent):
    """An artifact (adapter, merged model, checkpoint, export, dataset) was written for the run."""

    schema_id = "halo.evt.run-artifact-added.v1"

    kind: str = Field(description="adapter | model | checkpoint | export | dataset | samples | other.")
    format: str = Field(description="peft | hf | gguf | mlx | jsonl | parquet | other.")
    path: str = Field(description="Path in the artifact store.")
    sha256: str | None = Field(default=None, description="Content hash (of the main file, or a manifest of files).")
    size_bytes: int | None = Field(default=None, ge=0, description="Total size in bytes.")
    step: int | None = Field(default=None, description="Step it was written at, if any.")
    quant: str | None = Field(default=None, description="Quantization of an export (fp32 | fp16 | bf16 | q8 | q4), if any.")
    status: str | None = Field(default=None, description="verified | failed | unverified for convert/merge outputs.")
    details: dict[str, Any] = Field(default_factory=dict,
                                    description="Kind-specific details: parents, the round-trip verify figures.")


class RunFinished(RunEvent):
    schema_id = "halo.evt.run-finished.v1"

    state: JobState = Field(description="succeeded | failed | cancelled.")
    summary: dict[str, Any] = Field(default_factory=dict, description="training_summary.json contents.")
    error: str | None = Field(default=None, description="Failure reason.")


RUN_EVENT_TYPES: dict[str, type[RunEvent]] = {
    "started": RunStarted,
    "progressed": RunProgressed,
    "checkpointed": RunCheckpointed,
    "artifact-added": RunArtifactAdded,
    "finished": RunFinished,
}
