"""Write side besides ingest: tags, notes, evaluation results, and deleting a run."""

from __future__ import annotations

import shutil
from pathlib import Path

from halo_common.errors import Conflict
from halo_schemas.base import utcnow
from halo_schemas.jobs import JobState
from halo_schemas.registry import (
    ArtifactDeleted,
    ArtifactDeleteRequest,
    EvalRecordRequest,
    RunDeleted,
    RunDeleteRequest,
    RunNoteRequest,
    RunTagRequest,
)
from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from halo_registry.core.db import (
    Database,
    artifacts,
    deleted_runs,
    eval_results,
    lineage,
    metric_rollups,
    metric_stats,
    metrics,
    power_samples,
    run_tags,
    runs,
)
from halo_registry.core.queries import artifact_by_id, run_row


def tag(conn: Connection, db: Database, req: RunTagRequest) -> None:
    pk = run_row(conn, req.run_id).pk
    if req.remove:
        conn.execute(delete(run_tags).where(run_tags.c.run_pk == pk, run_tags.c.tag.in_(req.remove)))
    add = sorted(set(req.add) - set(req.remove))
    if add:
        conn.execute(db.insert(run_tags).on_conflict_do_nothing(), [{"run_pk": pk, "tag": t} for t in add])


def note(conn: Connection, req: RunNoteRequest) -> None:
    row = run_row(conn, req.run_id, runs.c.notes)
    text = req.notes
    if req.append and row.notes:
        text = f"{row.notes.rstrip()}\n\n{req.notes}"
    conn.execute(update(runs).where(runs.c.pk == row.pk).values(notes=text))


def record_eval(conn: Connection, db: Database, req: EvalRecordRequest) -> int:
    """Upsert results on (run, task, metric); returns how many were written."""
    pk = run_row(conn, req.run_id).pk
    now = utcnow()
    rows = {
        (r.task, r.metric): {
            "run_pk": pk, "task": r.task, "metric": r.metric, "value": r.value, "higher_is_better": r.higher_is_better,
            "num_samples": r.num_samples, "stderr": r.stderr, "details": r.details or None, "source": req.source,
            "created_at": now,
        }
        for r in req.results
    }
    stmt = db.insert(eval_results)
    ex = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_pk", "task", "metric"],
        set_={"value": ex.value, "higher_is_better": ex.higher_is_better, "num_samples": ex.num_samples,
              "stderr": ex.stderr, "details": ex.details, "source": ex.source, "created_at": ex.created_at},
    )
    conn.execute(stmt, list(rows.values()))
    return len(rows)


def remove_run_rows(conn: Connection, pk: int, run_id: str) -> list[str]:
    """Delete every row of a run (the run's own lineage as a child too); returns its artifact paths."""
    paths = list(conn.scalars(select(artifacts.c.path).where(artifacts.c.run_pk == pk)))
    for table in (metrics, metric_stats, metric_rollups, power_samples, artifacts, eval_results, run_tags):
        conn.execute(delete(table).where(table.c.run_pk == pk))
    conn.execute(delete(lineage).where(lineage.c.child_run_id == run_id))
    conn.execute(delete(runs).where(runs.c.pk == pk))
    return paths


def delete_run(db: Database, home: Path, run_dir: Path, req: RunDeleteRequest) -> RunDeleted:
    """Delete a run's rows (leaving a tombstone so late events do not bring it back) and, unless
    ``keep_artifacts``, its run directory and artifact files — only those inside HALO_HOME."""
    with db.write() as conn:
        row = run_row(conn, req.run_id)
        if row.status == JobState.RUNNING.value and not req.force:
            raise Conflict(f"run {req.run_id!r} is still running; cancel it first or delete with force", param="force")
        paths = remove_run_rows(conn, row.pk, req.run_id)
        now = utcnow()
        conn.execute(db.insert(deleted_runs).on_conflict_do_update(index_elements=["run_id"], set_={"deleted_at": now}),
                     [{"run_id": req.run_id, "deleted_at": now}])
    removed: list[str] = []
    kept = sorted(set(paths))
    if not req.keep_artifacts:
        kept = []
        root = home.resolve()
        for p in sorted({str(run_dir), *paths}):
            target = Path(p).expanduser()
            resolved = target.resolve()
            if not resolved.is_relative_to(root) or resolved == root:
                kept.append(p)  # never delete outside HALO_HOME, whatever a path says
                continue
            if resolved.is_relative_to(run_dir.resolve()) and resolved != run_dir.resolve():
                continue  # goes with the run directory
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
                removed.append(p)
            elif target.exists() or target.is_symlink():
                target.unlink()
                removed.append(p)
    return RunDeleted(run_id=req.run_id, removed_paths=removed, kept_paths=kept)


def delete_artifact(db: Database, home: Path, req: ArtifactDeleteRequest) -> ArtifactDeleted:
    """Forget one artifact row and, unless ``keep_files``, delete its file or directory and the files
    listed in ``details.files`` (a manifest beside a GGUF) — only inside HALO_HOME, never a run directory."""
    with db.write() as conn:
        info = artifact_by_id(conn, req.id)
        conn.execute(delete(artifacts).where(artifacts.c.id == req.id))
    files = [info.path, *[f for f in (info.details.get("files") or []) if isinstance(f, str)]]
    if req.keep_files:
        return ArtifactDeleted(id=req.id, kept_paths=files)
    removed, kept = [], []
    root = home.resolve()
    runs_root = (root / "runs").resolve()
    for p in files:
        target = Path(p).expanduser()
        resolved = target.resolve()
        if not resolved.is_relative_to(root) or resolved in (root, runs_root) or resolved.parent == runs_root:
            kept.append(p)  # outside HALO_HOME, or a whole run directory: not this artifact's to delete
        elif target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
            removed.append(p)
        elif target.exists() or target.is_symlink():
            target.unlink()
            removed.append(p)
    return ArtifactDeleted(id=req.id, removed_paths=removed, kept_paths=kept)
