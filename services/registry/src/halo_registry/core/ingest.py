"""Apply run events to the database, a batch per transaction, idempotently.

    stats = apply_events(db, [started, progressed, ..., finished])

Idempotence: a metric point is keyed by (run, metric, step) and a replayed point overwrites itself
(a resumed run re-logging a step overwrites it with the newer value); artifacts are keyed by (run,
path), tags and lineage by their pair; the run's status only moves for an event newer (ts, seq)
than the one that set it. So the same events applied twice, or interleaved with their replay,
leave exactly the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from halo_common.ids import is_valid_id
from halo_schemas.events import (
    RunArtifactAdded,
    RunCheckpointed,
    RunEvent,
    RunFinished,
    RunProgressed,
    RunStarted,
)
from halo_schemas.jobs import JobState
from sqlalchemy import case, select, update
from sqlalchemy.engine import Connection

from halo_registry.core.db import (
    ROLLUP_STEPS,
    Database,
    artifacts,
    deleted_runs,
    lineage,
    metric_stats,
    run_tags,
    runs,
)

#: A progressed event's metric with this name is also a power sample for the measured cost.
POWER_METRIC = "power_watts"
#: Column widths ingest respects (an event whose run id is not a valid id — halo_common.ids — is
#: ignored, a longer metric name skipped).
MAX_RUN_ID = 128
MAX_METRIC_NAME = 128

_STATE_COLUMNS = (
    "pk", "run_id", "name", "job_id", "service", "method", "base_model", "models", "backend", "status", "status_ts",
    "status_seq", "created_at", "started_at", "finished_at", "last_event_at", "duration_s", "last_step", "total_steps",
    "spec", "summary", "error",
)


@dataclass
class IngestStats:
    """What one :func:`apply_events` call did."""

    events: int = 0
    points: int = 0
    runs_created: int = 0
    ignored: int = 0
    skipped_points: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    def add(self, other: IngestStats) -> None:
        self.events += other.events
        self.points += other.points
        self.runs_created += other.runs_created
        self.ignored += other.ignored
        self.skipped_points += other.skipped_points
        for k, v in other.by_type.items():
            self.by_type[k] = self.by_type.get(k, 0) + v


def models_from_spec(spec: dict[str, Any], base_model: str | None) -> dict[str, str]:
    """Every model a spec names: top-level ``model`` / ``*_model`` string fields, plus the base."""
    out = {k: v for k, v in spec.items() if isinstance(v, str) and (k == "model" or k.endswith("_model"))}
    if base_model:
        out.setdefault("base_model", base_model)
    return out


def lineage_from_spec(run_id: str, spec: dict[str, Any], ts: datetime) -> dict[str, Any] | None:
    """A lineage row when the spec names a parent: ``parent_run_id`` (+ ``fork_step``,
    ``fork_cycle``, ``lineage_relation``)."""
    parent = spec.get("parent_run_id")
    if not is_valid_id(parent) or parent == run_id:
        return None

    def as_int(v: Any) -> int | None:
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    relation = spec.get("lineage_relation")
    return {
        "parent_run_id": parent, "child_run_id": run_id,
        "relation": relation[:32] if isinstance(relation, str) and relation else "fork",
        "step": as_int(spec.get("fork_step")), "cycle": as_int(spec.get("fork_cycle")), "created_at": ts,
    }


def utc(ts: datetime) -> datetime:
    """``ts`` as an aware UTC datetime (a naive one is taken as UTC)."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _newer(state: dict[str, Any], ev: RunEvent, ts: datetime) -> bool:
    if state["status_ts"] is None:
        return True
    return (ts, ev.seq) > (state["status_ts"], state["status_seq"] if state["status_seq"] is not None else -1)


def _clip(value: Any, n: int) -> Any:
    """Strings cut to their column's width: an over-long field never fails a whole batch."""
    return value[:n] if isinstance(value, str) else value


def _apply(state: dict[str, Any], ev: RunEvent) -> None:
    """Fold one event into the run's row state (in memory)."""
    ts = utc(ev.ts)
    state["job_id"] = state["job_id"] or _clip(ev.job_id, 128)
    state["service"] = state["service"] or _clip(ev.service, 64)
    state["created_at"] = min(state["created_at"], ts)
    state["last_event_at"] = ts if state["last_event_at"] is None else max(state["last_event_at"], ts)
    if isinstance(ev, RunStarted):
        spec = dict(ev.spec)
        state["method"] = _clip(ev.method, 64)
        base = ev.base_model or spec.get("base_model") or spec.get("model")
        state["base_model"] = _clip(base, 500) if isinstance(base, str) else state["base_model"]
        state["models"] = models_from_spec(spec, state["base_model"]) or state["models"]
        state["backend"] = _clip(ev.backend, 32) or state["backend"]
        state["spec"] = spec or state["spec"]
        name = spec.get("name")
        state["name"] = _clip(name, 200) if isinstance(name, str) and name else state["name"]
        state["total_steps"] = ev.total_steps or state["total_steps"]
        state["started_at"] = ts if state["started_at"] is None else min(state["started_at"], ts)
        if _newer(state, ev, ts):
            state.update(status=JobState.RUNNING.value, status_ts=ts, status_seq=ev.seq,
                         finished_at=None, duration_s=None, error=None)
    elif isinstance(ev, RunProgressed):
        if ev.metrics:
            state["last_step"] = ev.step if state["last_step"] is None else max(state["last_step"], ev.step)
        state["total_steps"] = ev.total_steps or state["total_steps"]
    elif isinstance(ev, RunFinished):
        if _newer(state, ev, ts):
            state.update(status=JobState(ev.state).value, status_ts=ts, status_seq=ev.seq,
                         finished_at=ts, error=ev.error)
            if ev.summary:
                state["summary"] = dict(ev.summary)
            start = state["started_at"] or state["created_at"]
            state["duration_s"] = max((ts - start).total_seconds(), 0.0)


def apply_events(db: Database, events: Sequence[RunEvent]) -> IngestStats:
    """Apply ``events`` (in order) in one transaction. Events of deleted runs are ignored."""
    stats = IngestStats(events=len(events))
    for ev in events:
        kind = type(ev).__name__
        stats.by_type[kind] = stats.by_type.get(kind, 0) + 1
    if not events:
        return stats
    run_ids = sorted({e.run_id for e in events})
    with db.write() as conn:
        tomb = set(conn.scalars(select(deleted_runs.c.run_id).where(deleted_runs.c.run_id.in_(run_ids))))
        # A run id outside the shared id pattern could never be shown, deleted or given a run
        # directory: such events are ignored, like those of deleted runs.
        live = [e for e in events if e.run_id not in tomb and is_valid_id(e.run_id)]
        stats.ignored = len(events) - len(live)
        if not live:
            return stats
        states, created = _load_states(db, conn, live)
        stats.runs_created = created
        originals = {rid: dict(s) for rid, s in states.items()}

        points: dict[tuple[int, str, int], float] = {}
        power: dict[tuple[int, int], tuple[datetime, float]] = {}
        arts: dict[tuple[int, str], dict[str, Any]] = {}
        tags: set[tuple[int, str]] = set()
        links: dict[tuple[str, str], dict[str, Any]] = {}
        for ev in live:
            state = states[ev.run_id]
            pk = state["pk"]
            _apply(state, ev)
            if isinstance(ev, RunProgressed):
                for name, value in ev.metrics.items():
                    # NaN cannot be stored by SQLite (it becomes NULL) nor sent as JSON; a
                    # diverged run keeps its last finite values.
                    if math.isfinite(value) and 0 < len(name) <= MAX_METRIC_NAME:
                        points[(pk, name, ev.step)] = float(value)
                    else:
                        stats.skipped_points += 1
                watts = ev.metrics.get(POWER_METRIC)
                if watts is not None and math.isfinite(watts) and watts >= 0:
                    power[(pk, ev.step)] = (utc(ev.ts), float(watts))
            elif isinstance(ev, RunStarted):
                for tag in ev.spec.get("tags") or []:
                    if isinstance(tag, str) and tag.strip():
                        tags.add((pk, tag.strip()[:64]))
                link = lineage_from_spec(ev.run_id, ev.spec, utc(ev.ts))
                if link:
                    links[(link["parent_run_id"], link["child_run_id"])] = link
            elif isinstance(ev, RunCheckpointed):
                arts[(pk, ev.path)] = {"run_pk": pk, "kind": "checkpoint", "format": "other", "path": _clip(ev.path, 1000),
                                       "sha256": None, "size_bytes": None, "step": ev.step, "created_at": utc(ev.ts),
                                       "quant": None, "status": None, "details": None}
            elif isinstance(ev, RunArtifactAdded):
                arts[(pk, ev.path)] = {"run_pk": pk, "kind": _clip(ev.kind, 32), "format": _clip(ev.format, 32),
                                       "path": _clip(ev.path, 1000), "sha256": _clip(ev.sha256, 64),
                                       "size_bytes": ev.size_bytes, "step": ev.step,
                                       "created_at": utc(ev.ts), "quant": _clip(ev.quant, 16),
                                       "status": _clip(ev.status, 16), "details": ev.details or None}

        stats.points = write_points(db, conn, [(pk, n, s, v) for (pk, n, s), v in points.items()])
        if power:
            conn.exec_driver_sql(
                f"INSERT INTO power_samples (run_pk, step, ts, watts) VALUES ({db.placeholders(conn, 4)}) "
                "ON CONFLICT (run_pk, step) DO UPDATE SET ts = excluded.ts, watts = excluded.watts",
                [(pk, step, db.driver_datetime(ts), watts) for (pk, step), (ts, watts) in power.items()],
            )
        if arts:
            stmt = db.insert(artifacts)
            ex = stmt.excluded
            stmt = stmt.on_conflict_do_update(
                index_elements=["run_pk", "path"],
                set_={"kind": ex.kind, "format": ex.format, "sha256": ex.sha256, "size_bytes": ex.size_bytes,
                      "step": ex.step, "quant": ex.quant, "status": ex.status, "details": ex.details},
            )
            conn.execute(stmt, list(arts.values()))
        if tags:
            conn.execute(db.insert(run_tags).on_conflict_do_nothing(),
                         [{"run_pk": pk, "tag": t} for pk, t in sorted(tags)])
        if links:
            stmt = db.insert(lineage)
            stmt = stmt.on_conflict_do_update(
                index_elements=["parent_run_id", "child_run_id"],
                set_={"relation": stmt.excluded.relation, "step": stmt.excluded.step, "cycle": stmt.excluded.cycle},
            )
            conn.execute(stmt, list(links.values()))
        for rid, state in states.items():
            changes = {k: v for k, v in state.items() if k != "pk" and v != originals[rid][k]}
            if changes:
                conn.execute(update(runs).where(runs.c.pk == state["pk"]).values(**changes))
    return stats


def _load_states(db: Database, conn: Connection, events: Sequence[RunEvent]) -> tuple[dict[str, dict[str, Any]], int]:
    """Row state of every run the events touch, creating placeholder rows for new runs (a run is
    created by whichever of its events arrives first)."""
    first: dict[str, RunEvent] = {}
    for ev in events:
        if ev.run_id not in first or utc(ev.ts) < utc(first[ev.run_id].ts):
            first[ev.run_id] = ev
    cols = [runs.c[c] for c in _STATE_COLUMNS]
    query = select(*cols).where(runs.c.run_id.in_(list(first)))
    if db.dialect == "postgresql":
        query = query.with_for_update()
    rows = {r.run_id: dict(r._mapping) for r in conn.execute(query)}
    new = [rid for rid in first if rid not in rows]
    if new:
        conn.execute(
            db.insert(runs).on_conflict_do_nothing(index_elements=["run_id"]),
            [{"run_id": rid, "method": "unknown", "status": JobState.RUNNING.value, "created_at": utc(first[rid].ts),
              "service": _clip(first[rid].service, 64), "job_id": _clip(first[rid].job_id, 128), "notes": "",
              "origin": "local"}
             for rid in new],
        )
        again = select(*cols).where(runs.c.run_id.in_(new))
        if db.dialect == "postgresql":
            again = again.with_for_update()
        rows.update({r.run_id: dict(r._mapping) for r in conn.execute(again)})
    return rows, len(new)


def write_points(db: Database, conn: Connection, points: Iterable[tuple[int, str, int, float]]) -> int:
    """Upsert metric points ``(run_pk, name, step, value)`` and fold them into ``metric_stats``.
    Returns how many points were written. Shared by ingest and bundle import."""
    pts = list(points)
    if not pts:
        return 0
    ids = db.name_ids(conn, {name for _, name, _, _ in pts})
    rows: list[tuple[int, int, int, float]] = []
    # (pk, name_id) -> [first_step, last_step, last_value]
    span: dict[tuple[int, int], list[Any]] = {}
    for pk, name, step, value in pts:
        nid = ids[name]
        rows.append((pk, nid, step, value))
        s = span.get((pk, nid))
        if s is None:
            span[(pk, nid)] = [step, step, value]
        else:
            if step < s[0]:
                s[0] = step
            if step >= s[1]:
                s[1], s[2] = step, value
    # The hot path: driver-level executemany of plain tuples (same statement on SQLite and
    # PostgreSQL but for the markers); SQLAlchemy's per-row parameter processing would cost more
    # than the inserts themselves.
    mark = db.placeholders(conn, 1)
    conn.exec_driver_sql(
        f"INSERT INTO metrics (run_pk, name_id, step, value) VALUES ({db.placeholders(conn, 4)}) "
        "ON CONFLICT (run_pk, name_id, step) DO UPDATE SET value = excluded.value", rows)

    # Rollup blocks touched by these points, recomputed from the stored points (so a replay or
    # an overwritten step leaves them exact, where incrementing would double count).
    blocks = sorted({(pk, nid, step // ROLLUP_STEPS) for pk, nid, step, _ in rows})
    conn.exec_driver_sql(
        "INSERT INTO metric_rollups (run_pk, name_id, bucket, n, vsum, vmin, vmax, first_step) "
        f"SELECT run_pk, name_id, step / {ROLLUP_STEPS}, COUNT(*), SUM(value), MIN(value), MAX(value), MIN(step) "
        f"FROM metrics WHERE run_pk = {mark} AND name_id = {mark} AND step >= {mark} AND step < {mark} "
        f"GROUP BY run_pk, name_id, step / {ROLLUP_STEPS} "
        "ON CONFLICT (run_pk, name_id, bucket) DO UPDATE SET n = excluded.n, vsum = excluded.vsum, "
        "vmin = excluded.vmin, vmax = excluded.vmax, first_step = excluded.first_step",
        [(pk, nid, b * ROLLUP_STEPS, (b + 1) * ROLLUP_STEPS) for pk, nid, b in blocks],
    )

    st = db.insert(metric_stats)
    ex, cur = st.excluded, metric_stats.c
    st = st.on_conflict_do_update(
        index_elements=["run_pk", "name_id"],
        set_={
            "first_step": db.least(cur.first_step, ex.first_step),
            "last_step": db.greatest(cur.last_step, ex.last_step),
            "last_value": case((ex.last_step >= cur.last_step, ex.last_value), else_=cur.last_value),
        },
    )
    conn.execute(st, [{"run_pk": pk, "name_id": nid, "first_step": s[0], "last_step": s[1], "last_value": s[2]}
                      for (pk, nid), s in span.items()])
    return len(rows)


def rebuild_rollups(conn: Connection) -> None:
    """Recompute every rollup block from the stored points (after a bulk load that bypassed
    :func:`write_points`, or to repair). Same SQL as migration 0003's backfill."""
    conn.exec_driver_sql("DELETE FROM metric_rollups")
    conn.exec_driver_sql(
        "INSERT INTO metric_rollups (run_pk, name_id, bucket, n, vsum, vmin, vmax, first_step) "
        f"SELECT run_pk, name_id, step / {ROLLUP_STEPS}, COUNT(*), SUM(value), MIN(value), MAX(value), MIN(step) "
        f"FROM metrics GROUP BY run_pk, name_id, step / {ROLLUP_STEPS}"
    )
