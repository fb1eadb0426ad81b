"""convert / merge-bake / merge-combine as jobs: spec parsing, the work, and what the run records.

The serve service consumes ``halo.job.serve.<type>`` (see :mod:`halo_serve.handlers`); this module
holds the logic so it is testable without a bus::

    spec = parse_spec("convert", envelope.spec)        # BadRequest naming the field
    manifest = run_spec("convert", spec, progress=print)
    artifact_event_fields(manifest)  # -> RunArtifactAdded fields: kind, format, quant, status, details...
    job_summary(manifest)            # -> RunFinished.summary
    started_spec("convert", spec)    # -> RunStarted.spec (+ parent_run_id: the registry's lineage link)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from halo_common.errors import BadRequest
from halo_schemas.base import describe_validation_error
from halo_schemas.convert import ArtifactManifest, ConvertSpec, MergeBakeSpec, MergeCombineSpec
from pydantic import ValidationError

from halo_serve.core.convert.common import manifest_path

JOB_SPECS: dict[str, type[ConvertSpec] | type[MergeBakeSpec] | type[MergeCombineSpec]] = {
    "convert": ConvertSpec, "merge-bake": MergeBakeSpec, "merge-combine": MergeCombineSpec,
}


def parse_spec(job_type: str, spec: dict[str, Any]) -> Any:
    """The validated spec of a ``job_type`` job; BadRequest naming the field (or the unknown type)."""
    cls = JOB_SPECS.get(job_type)
    if cls is None:
        raise BadRequest(f"unknown job type {job_type!r}; known: {', '.join(JOB_SPECS)}", param="job_type")
    try:
        return cls.model_validate(spec)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc, what=f"{job_type} spec")) from None


def sources(job_type: str, spec: Any) -> list[str]:
    """What the job reads: the model, the adapter(s)."""
    if job_type == "convert":
        return [spec.source]
    if job_type == "merge-bake":
        return [spec.adapter]
    return list(spec.adapters)


def started_spec(job_type: str, spec: Any) -> dict[str, Any]:
    """``RunStarted.spec``: the spec plus ``parent_run_id`` when a source is ``run:<id>`` — the registry
    turns that into a lineage link (run -> its export / merge)."""
    out = spec.model_dump(mode="json")
    runs = [s[4:] for s in sources(job_type, spec) if s.startswith("run:")]
    if runs:
        out["parent_run_id"] = runs[0]
        out["lineage_relation"] = "convert" if job_type == "convert" else "merge"
    return out


def run_spec(job_type: str, spec: Any, progress: Callable[[str], None] | None = None) -> ArtifactManifest:
    """Do the work (blocking: file I/O and model math) and return the output's manifest."""
    from halo_serve.core.convert import bake, combine, convert

    say = progress or (lambda _m: None)
    if job_type == "convert":
        return convert(spec, progress=say)
    say(f"{job_type}: {', '.join(sources(job_type, spec))}")
    return bake(spec) if job_type == "merge-bake" else combine(spec)


def artifact_event_fields(m: ArtifactManifest) -> dict[str, Any]:
    """Fields of the ``RunArtifactAdded`` announcing ``m`` (the registry stores each of them)."""
    details: dict[str, Any] = {"parents": m.parents, "job": m.job, "export_seconds": round(m.seconds, 3)}
    if m.verify is not None:
        details["verify"] = m.verify.model_dump(mode="json")
    if Path(m.path).is_file():  # the manifest lives beside a single-file output (GGUF): it goes with it
        details["files"] = [str(manifest_path(Path(m.path)))]
    return {"kind": m.kind, "format": m.format, "quant": m.quant, "path": m.path, "sha256": m.sha256,
            "size_bytes": m.size_bytes, "status": m.status, "details": details}


def job_summary(m: ArtifactManifest) -> dict[str, Any]:
    """``RunFinished.summary``: the manifest (what ``halo-forge convert`` prints as its table)."""
    return m.model_dump(mode="json")


def verify_error(m: ArtifactManifest) -> str | None:
    """The job's error when its verify failed (the artifact is still recorded, with status ``failed``)."""
    if m.status != "failed" or m.verify is None:
        return None
    return "round-trip verify failed: " + "; ".join(m.verify.failures or ["figures outside their limits"])
