"""Read side of the registry: search with facets, run detail, downsampled metric series,
comparison of up to 8 runs, and the cohort evaluation grid. Every function takes an open
connection (``with db.read() as conn``) and returns wire models."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from halo_common.errors import NotFound
from halo_schemas.registry import (
    DEFAULT_COMPARE_METRICS,
    FACET_FIELDS,
    ArtifactInfo,
    ArtifactSearch,
    ConfigDiffRow,
    EvalGrid,
    EvalGridRequest,
    EvalResult,
    FacetCount,
    GridCell,
    GridTask,
    LineageLink,
    MetricInfo,
    MetricSeries,
    RunCompareRequest,
    RunComparison,
    RunSearch,
    RunsPage,
    RunSummary,
)
from sqlalchemy import ARRAY, Column, Integer, and_, any_, cast, func, or_, select, true
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import Alias, FromClause

from halo_registry.core.db import (
    ROLLUP_STEPS,
    Database,
    artifacts,
    eval_results,
    lineage,
    metric_names,
    metric_rollups,
    metric_stats,
    metrics,
    run_facet_counts,
    run_tag_facet_counts,
    run_tags,
    runs,
)

SUMMARY_COLUMNS = (
    runs.c.pk, runs.c.run_id, runs.c.name, runs.c.method, runs.c.base_model, runs.c.models, runs.c.backend,
    runs.c.status, runs.c.job_id, runs.c.service, runs.c.origin, runs.c.created_at, runs.c.started_at,
    runs.c.finished_at, runs.c.last_event_at, runs.c.duration_s, runs.c.last_step, runs.c.total_steps, runs.c.error,
)
FACET_LIMIT = 25


# ---- summaries -------------------------------------------------------------------------------
def summaries(conn: Connection, rows: Sequence[Row[Any]]) -> list[RunSummary]:
    """Build :class:`RunSummary` for ``rows`` (selected with SUMMARY_COLUMNS), three queries in all."""
    if not rows:
        return []
    pks = [r.pk for r in rows]
    tags: dict[int, list[str]] = {}
    for pk, tag in conn.execute(select(run_tags.c.run_pk, run_tags.c.tag).where(run_tags.c.run_pk.in_(pks))
                                .order_by(run_tags.c.tag)):
        tags.setdefault(pk, []).append(tag)
    with_eval = set(conn.scalars(select(eval_results.c.run_pk).where(eval_results.c.run_pk.in_(pks)).distinct()))
    last: dict[int, dict[str, float]] = {}
    q = (select(metric_stats.c.run_pk, metric_names.c.name, metric_stats.c.last_value)
         .join(metric_names, metric_names.c.id == metric_stats.c.name_id)
         .where(metric_stats.c.run_pk.in_(pks)))
    for pk, name, value in conn.execute(q):
        last.setdefault(pk, {})[name] = value
    return [_summary(r, tags.get(r.pk, []), r.pk in with_eval, last.get(r.pk, {})) for r in rows]


def _summary(r: Row[Any], tags: list[str], has_eval: bool, last: dict[str, float]) -> RunSummary:
    duration = r.duration_s
    if duration is None and r.started_at is not None and r.last_event_at is not None:
        duration = max((r.last_event_at - r.started_at).total_seconds(), 0.0)
    return RunSummary(
        run_id=r.run_id, name=r.name, method=r.method, base_model=r.base_model, models=r.models or {},
        backend=r.backend, status=r.status, job_id=r.job_id, service=r.service, origin=r.origin,
        created_at=r.created_at, started_at=r.started_at, finished_at=r.finished_at, duration_s=duration,
        last_step=r.last_step, total_steps=r.total_steps, tags=tags, has_eval=has_eval,
        last_metrics={k: last[k] for k in sorted(last)}, error=r.error,
    )


def run_row(conn: Connection, run_id: str, *columns: Any) -> Row[Any]:
    """The runs row of ``run_id`` (SUMMARY_COLUMNS plus ``columns``); :class:`NotFound` naming it."""
    row = conn.execute(select(*SUMMARY_COLUMNS, *columns).where(runs.c.run_id == run_id)).first()
    if row is None:
        raise NotFound(f"no run {run_id!r} in the registry", param="run_id")
    return row


def run_summary(conn: Connection, run_id: str) -> RunSummary:
    return summaries(conn, [run_row(conn, run_id)])[0]


# ---- search ----------------------------------------------------------------------------------
class _NotIndexed(Alias):
    """``runs`` read by a full scan on SQLite (``FROM runs AS runs NOT INDEXED``); plain elsewhere.
    Subclasses name an index instead (``INDEXED BY <hint>``)."""

    inherit_cache = True
    hint = "NOT INDEXED"


class _ByCreated(_NotIndexed):
    inherit_cache = True
    hint = "INDEXED BY ix_runs_created_at"


class _ByFacets(_NotIndexed):
    inherit_cache = True
    hint = "INDEXED BY ix_runs_facets"


class _ByMethod(_NotIndexed):
    inherit_cache = True
    hint = "INDEXED BY ix_runs_method_created"


class _ByBackend(_NotIndexed):
    inherit_cache = True
    hint = "INDEXED BY ix_runs_backend"


@compiles(_NotIndexed, "sqlite")
@compiles(_ByCreated, "sqlite")
@compiles(_ByFacets, "sqlite")
@compiles(_ByMethod, "sqlite")
@compiles(_ByBackend, "sqlite")
def _not_indexed(element: _NotIndexed, compiler: Any, **kw: Any) -> str:
    text = compiler.visit_alias(element, **kw)
    return f"{text} {element.hint}" if kw.get("asfrom") else text


def _runs(db: Database, scan: bool) -> FromClause:
    # Why: SQLite's planner, without statistics it can trust, picks an index whenever a filter
    # column has one, then looks up every matching row (~2 µs each): 60-150 ms for a filter that
    # matches a third of 100k runs, or for a rare substring walked along the created_at index.
    # A full scan of the runs table costs ~10-20 ms. PostgreSQL's planner has real statistics.
    return _NotIndexed._construct(runs, name="runs") if scan and db.is_sqlite else runs


def _page_runs(db: Database, req: RunSearch, matching: int, all_runs: int) -> FromClause:
    """The runs to page a countable, newest-first (or oldest-first) search from, planned with the exact
    counts SQLite's planner lacks (PostgreSQL plans well from its statistics: plain ``runs``).

    Walking the created_at index finds a page after about (offset + limit) x all / matching rows; reading
    the matching rows through a filter's index and sorting them costs about ``matching`` rows. Walk when
    that is fewer rows; otherwise read through the index of the most selective kind of filter present
    (status, method, backend), or scan (a model substring alone)."""
    if not db.is_sqlite or req.tag:  # a tag's rows come by their key list; the planner does well with it
        return runs
    wanted = req.offset + req.limit
    if matching == 0 or wanted * all_runs <= matching * matching:
        return _ByCreated._construct(runs, name="runs")
    kind = _ByFacets if req.status else _ByMethod if req.method else _ByBackend if req.backend else _NotIndexed
    return kind._construct(runs, name="runs")


def _tag_by_keys(db: Database, conn: Connection, req: RunSearch, matching: int, tagged: int) -> bool:
    """Whether PostgreSQL should read a tagged page's runs by primary key (:func:`_tag_keys`) rather than
    plan it itself. Its planner estimates a walk down created_at from the tag's share, as if the tag's
    runs were spread evenly over time; but a tag's runs are made together (an experiment, a sweep), so the
    walk can probe every newer run first (20,000 probes for a page of a 3 % tag at 100k runs, 40 ms). With
    the exact counts (``matching`` runs, ``tagged`` with the tag): read the keys when a walk would read
    more rows than the matches (SQLite's rule) and than the tag's keys; otherwise (a big tag narrowed by
    a rare status, say) the planner's own choice of index stands."""
    if db.is_sqlite or not req.tag or matching == 0:
        return False
    every = conn.scalar(select(func.sum(run_facet_counts.c.n)).where(run_facet_counts.c.tag == "")) or 0
    walk = (req.offset + req.limit) * every  # x 1/matching: rows a walk reads
    return walk > matching * matching and walk > tagged * matching


def _tag_keys(t: FromClause, tag: str) -> ColumnElement[bool]:
    """``pk = ANY(<the tag's run keys as one array>)``: the array is computed once, before planning the rest,
    and PostgreSQL reads those runs through the primary key (a plain ``IN`` lets it walk created_at)."""
    keys = select(func.array_agg(run_tags.c.run_pk)).where(run_tags.c.tag == tag).scalar_subquery()
    return t.c.pk == any_(cast(keys, ARRAY(Integer)))


def _contains(db: Database, col: Any, text: str) -> ColumnElement[bool]:
    """Case-insensitive substring match: SQLite's LIKE already ignores ASCII case (lower() on both
    sides would double the cost of a scan); PostgreSQL's ILIKE."""
    pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return col.like(pattern, escape="\\") if db.is_sqlite else col.ilike(pattern, escape="\\")


def _conditions(db: Database, t: FromClause, req: RunSearch) -> dict[str, list[ColumnElement[bool]]]:
    """Filter clauses on ``t`` grouped by the facet they restrict (facet counts leave their own out)."""
    c = t.c
    conds: dict[str, list[ColumnElement[bool]]] = {k: [] for k in (*FACET_FIELDS, "other")}
    if req.status:
        conds["status"].append(c.status.in_([s.value for s in req.status]))
    if req.method:
        conds["method"].append(c.method.in_(req.method))
    if req.backend:
        conds["backend"].append(c.backend.in_(req.backend))
    if req.model:
        conds["base_model"].append(_contains(db, c.base_model, req.model))
    for tag in req.tag:  # an IN list from the tag index: selective, and cheap to probe
        conds["tag"].append(c.pk.in_(select(run_tags.c.run_pk).where(run_tags.c.tag == tag)))
    if req.text:
        conds["other"].append(or_(_contains(db, c.run_id, req.text), _contains(db, c.name, req.text)))
    if req.since:
        conds["other"].append(c.created_at >= req.since)
    if req.until:
        conds["other"].append(c.created_at < req.until)
    if req.has_eval is not None:
        evaluated = select(eval_results.c.run_pk)
        conds["other"].append(c.pk.in_(evaluated) if req.has_eval else c.pk.not_in(evaluated))
    return conds


def _all(conds: dict[str, list[ColumnElement[bool]]], *, without: str | None = None) -> ColumnElement[bool]:
    return and_(true(), *(cond for k, cs in conds.items() if k != without for cond in cs))


def search(db: Database, conn: Connection, req: RunSearch) -> RunsPage:
    """One page of runs matching ``req``, its total, and facet counts when asked.

    Two steps: the page's primary keys (filter, sort, limit: narrow rows, often index-only), then
    their summary rows. With a substring filter or a metric sort the total comes from the same query
    (``count(*) OVER ()``): that query reads every match anyway, so a second one would double the cost."""
    desc = req.sort.startswith("-")
    field = req.sort.lstrip("+-")
    substring = bool(req.text or req.model)
    # Total and facets of what a dashboard's facet clicks produce come from the trigger-kept counts,
    # before the page: the exact number of matching rows also plans the page's query (SQLite; a tagged
    # page on PostgreSQL).
    counted = _counted(db, conn, req) if _countable(req) else None
    by_keys = False
    if counted is not None and field == "created_at":
        t = _page_runs(db, req, counted.total, counted.runs)
        by_keys = _tag_by_keys(db, conn, req, counted.total, counted.runs)
    else:
        # Scan rather than walk an index when a substring filter is present (its matches can be
        # anywhere) or when the order is not created_at, which every runs index ends with — unless a
        # tag filter already narrows the rows through the tag index.
        t = _runs(db, substring or (not field.startswith("created_at") and not req.tag))
    conds = _conditions(db, t, req)
    if counted is not None and _listable(counted.models):
        # The models the substring matches, as an IN list: a hash probe per run instead of a case-insensitive
        # substring match (and an index PostgreSQL can use).
        conds["base_model"] = [t.c.base_model.in_(counted.models)]
    if by_keys:
        conds["tag"] = [_tag_keys(t, req.tag[0])]
    cols: list[Any] = [t.c.pk]
    # Without counts, the total comes from the page's own query (``count(*) OVER ()``) where that query
    # reads every match anyway: a substring filter (its matches can be anywhere) or a metric sort (the
    # value comes through an outer join, so every match is sorted). A second query would repeat the work.
    over = counted is None and (substring or field.startswith("metric."))
    if over:
        cols.append(func.count().over().label("total"))
    query = select(*cols).where(_all(conds))
    if field.startswith("metric."):
        ids = db.name_ids(conn, [field[len("metric."):]], create=False)
        nid = next(iter(ids.values()), -1)
        ms = metric_stats.alias("sort_ms")
        query = query.outerjoin(ms, and_(ms.c.run_pk == t.c.pk, ms.c.name_id == nid))
        key: Any = ms.c.last_value
    else:
        key = t.c[field]
    order = [key.desc() if desc else key.asc()]
    if field.startswith("metric.") or not (isinstance(key, Column) and not key.nullable):
        # NULLs last (a metric's value comes through an outer join); said only where there can be some:
        # on PostgreSQL an index read backwards gives them first, so NULLS LAST on a NOT NULL column
        # (created_at) would sort every match instead of reading the first rows in order
        order = [order[0].nulls_last()]
    if field != "run_id":
        order.append(t.c.run_id.desc() if desc else t.c.run_id.asc())
    if counted is not None and counted.total <= req.offset:
        hits = []  # the counts are exact: no page to read
    else:
        hits = conn.execute(query.order_by(*order).limit(req.limit).offset(req.offset)).all()
    if counted is not None:
        total = counted.total
    elif over and hits:
        total = hits[0].total
    else:
        ct = _runs(db, substring)  # counting equality filters is an index-only scan: keep the index
        total = conn.scalar(select(func.count()).select_from(ct).where(_all(_conditions(db, ct, req)))) or 0
    pks = [h.pk for h in hits]
    found = {r.pk: r for r in conn.execute(select(*SUMMARY_COLUMNS).where(runs.c.pk.in_(pks)))} if pks else {}
    facets = {} if not req.facets else counted.facets if counted is not None else _facets(db, conn, req)
    return RunsPage(items=summaries(conn, [found[pk] for pk in pks]), total=total, limit=req.limit,
                    offset=req.offset, facets=facets)


_FACET_COLUMNS = ("status", "method", "backend", "base_model")


def _countable(req: RunSearch) -> bool:
    """Whether total and facets can come from ``run_facet_counts``: filters on the four facet columns
    and at most one tag (what a dashboard's facet clicks produce). Text, dates, evaluation and several
    tags need the runs themselves."""
    return not (req.text or req.since or req.until or req.has_eval is not None) and len(req.tag) <= 1


def _tally(rows: Any, *, facets: bool, missing: str | None) -> tuple[int, int, dict[str, dict[str, int]]]:
    """(matching, all, counts per facet value) from rows of (status, method, backend, base_model, n,
    ok_status, ok_method, ok_backend, ok_base_model): each ok flag says whether that facet's own filter
    holds for the row. A row counts for facet F when every *other* facet's filter holds: for all facets
    when no filter fails, for the one whose filter fails when exactly one does, for none otherwise.
    ``missing`` is how a NULL value reads (never a facet value)."""
    total = everything = 0
    counts: dict[str, dict[str, int]] = {c: {} for c in _FACET_COLUMNS}
    per_column = [counts[c] for c in _FACET_COLUMNS]
    every = range(len(_FACET_COLUMNS))
    # Positions, not attributes: a dashboard search reads ~1,300 rows, and attribute access per row
    # and facet was most of its time.
    for row in rows:
        n = row[4]
        everything += n
        failed = [i for i in every if not row[5 + i]]
        if not failed:
            total += n
        if not facets or len(failed) > 1:
            continue
        for i in failed or every:
            value = row[i]
            if value != missing:
                per_column[i][value] = per_column[i].get(value, 0) + n
    return total, everything, counts


class _Counts(NamedTuple):
    """What the trigger-kept counts answer for a :func:`_countable` search."""

    total: int  #: runs matching every filter
    facets: dict[str, list[FacetCount]]  #: empty unless asked
    runs: int  #: runs with the tag, or all runs
    models: list[str] | None  #: the base models the model substring matches (None without one)


def _counted(db: Database, conn: Connection, req: RunSearch) -> _Counts:
    """Total, facets and matching base models of a :func:`_countable` request from the trigger-kept counts:
    a few thousand rows at most instead of a scan of the runs (facets) and an index scan (total). The
    filters are the same SQL clauses as the search's, applied to the counts' columns. Facets are computed
    only when asked."""
    f = run_facet_counts.c
    conds = _conditions(db, run_facet_counts, req.model_copy(update={"tag": []}))
    flags = [(and_(true(), *conds[c]) if conds[c] else true()).label(f"ok_{c}") for c in _FACET_COLUMNS]
    rows = conn.execute(select(f.status, f.method, f.backend, f.base_model, f.n, *flags)
                        .where(f.tag == (req.tag[0] if req.tag else ""), f.n > 0)).all()
    total, everything, counts = _tally(rows, facets=req.facets, missing="")  # '' stands for NULL there
    models = _matching_models(db, conn, req, rows)
    if not req.facets:
        return _Counts(total, {}, everything, models)
    out = {c: [FacetCount(value=v, count=n) for v, n in sorted(cs.items(), key=lambda kv: (-kv[1], kv[0]))[:FACET_LIMIT]]
           for c, cs in counts.items()}
    # Without a model filter the tag facet sums the counts without base models (~10x fewer rows); with one,
    # an IN list of the matching models, cheaper than the substring match on every tag row.
    tf = run_facet_counts if req.model else run_tag_facet_counts
    tconds = _conditions(db, tf, req.model_copy(update={"tag": []}))
    if _listable(models):
        tconds["base_model"] = [tf.c.base_model.in_(models)]
    n = func.sum(tf.c.n).label("n")
    tq = (select(tf.c.tag, n).where(tf.c.tag != "", _all(tconds)).group_by(tf.c.tag).having(n > 0)
          .order_by(n.desc(), tf.c.tag).limit(FACET_LIMIT))
    out["tag"] = [FacetCount(value=tag, count=int(c)) for tag, c in conn.execute(tq)]
    return _Counts(total, out, everything, models)


#: Above this many matching base models the substring match stays (bind parameters are limited).
MODEL_LIST_MAX = 1000


def _listable(models: list[str] | None) -> bool:
    return models is not None and len(models) <= MODEL_LIST_MAX


def _matching_models(db: Database, conn: Connection, req: RunSearch, rows: Sequence[Row[Any]]) -> list[str] | None:
    """The base models ``req.model`` matches, from the untagged counts (they hold every run's model): without
    a tag filter those are the ``rows`` just read; with one, a substring match on a few hundred rows."""
    if not req.model:
        return None
    if not req.tag:
        return sorted({row[3] for row in rows if row[8] and row[3] != ""})  # ok_base_model, base_model
    f = run_facet_counts.c
    q = (select(f.base_model).distinct()
         .where(f.tag == "", f.n > 0, f.base_model != "", _contains(db, f.base_model, req.model)))
    return sorted(conn.scalars(q))


def _facets(db: Database, conn: Connection, req: RunSearch) -> dict[str, list[FacetCount]]:
    """Counts per status, method, backend, base model and tag, each with every other filter applied.

    The four column facets come from one scan grouped by all four columns, with each facet's own
    filter computed per group as a flag, so facet F sums the groups where the other flags hold.
    Without other filters that scan is of the (status, method, backend, base_model) index alone."""
    t = _runs(db, bool(req.text or req.since or req.until or req.has_eval is not None or req.tag))
    conds = _conditions(db, t, req)
    cols = _FACET_COLUMNS
    flags = [(and_(true(), *conds[f]) if conds[f] else true()).label(f"ok_{f}") for f in cols]
    q = (select(*(t.c[f] for f in cols), func.count().label("n"), *flags)
         .where(_all({k: v for k, v in conds.items() if k not in cols}))
         .group_by(*(t.c[f] for f in cols)))
    _, _, counts = _tally(conn.execute(q), facets=True, missing=None)
    out = {f: [FacetCount(value=v, count=n) for v, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:FACET_LIMIT]]
           for f, c in counts.items()}
    n = func.count().label("n")
    tq = (select(run_tags.c.tag, n)
          .where(run_tags.c.run_pk.in_(select(t.c.pk).where(_all(conds, without="tag"))))
          .group_by(run_tags.c.tag).order_by(n.desc(), run_tags.c.tag).limit(FACET_LIMIT))
    out["tag"] = [FacetCount(value=tag, count=c) for tag, c in conn.execute(tq)]
    return out


# ---- detail ----------------------------------------------------------------------------------
def metric_infos(conn: Connection, pk: int) -> list[MetricInfo]:
    """Per metric: points, min, max (from the rollup blocks: exact, 64x fewer rows) and last value."""
    r = metric_rollups.c
    q = (select(metric_names.c.name, func.sum(r.n), func.min(r.vmin), func.max(r.vmax),
                metric_stats.c.first_step, metric_stats.c.last_step, metric_stats.c.last_value)
         .select_from(metric_stats)
         .join(metric_names, metric_names.c.id == metric_stats.c.name_id)
         .join(metric_rollups, and_(r.run_pk == metric_stats.c.run_pk, r.name_id == metric_stats.c.name_id))
         .where(metric_stats.c.run_pk == pk)
         .group_by(metric_names.c.name, metric_stats.c.first_step, metric_stats.c.last_step, metric_stats.c.last_value)
         .order_by(metric_names.c.name))
    return [MetricInfo(name=n, points=c, min_value=lo, max_value=hi, first_step=f, last_step=last, last_value=v)
            for n, c, lo, hi, f, last, v in conn.execute(q)]


def _artifact(r: Any) -> ArtifactInfo:
    return ArtifactInfo(id=r.id, run_id=r.run_id, kind=r.kind, format=r.format, path=r.path, sha256=r.sha256,
                        size_bytes=r.size_bytes, step=r.step, created_at=r.created_at, quant=r.quant,
                        status=r.status, details=r.details or {})


def _artifact_select() -> Any:
    return select(artifacts, runs.c.run_id).join(runs, runs.c.pk == artifacts.c.run_pk)


def artifact_infos(conn: Connection, pk: int) -> list[ArtifactInfo]:
    q = _artifact_select().where(artifacts.c.run_pk == pk).order_by(artifacts.c.created_at, artifacts.c.id)
    return [_artifact(r) for r in conn.execute(q)]


def search_artifacts(conn: Connection, req: ArtifactSearch) -> list[ArtifactInfo]:
    """Artifacts of every run, newest first, filtered by kind / format / status / run."""
    q = _artifact_select()
    for col, value in ((artifacts.c.kind, req.kind), (artifacts.c.format, req.format),
                       (artifacts.c.status, req.status), (runs.c.run_id, req.run_id)):
        if value is not None:
            q = q.where(col == value)
    q = q.order_by(artifacts.c.created_at.desc(), artifacts.c.id.desc()).limit(req.limit)
    return [_artifact(r) for r in conn.execute(q)]


def artifact_by_id(conn: Connection, artifact_id: int) -> ArtifactInfo:
    row = conn.execute(_artifact_select().where(artifacts.c.id == artifact_id)).first()
    if row is None:
        raise NotFound(f"no artifact {artifact_id}", param="id")
    return _artifact(row)


def eval_infos(conn: Connection, pk: int) -> list[EvalResult]:
    q = select(eval_results).where(eval_results.c.run_pk == pk).order_by(eval_results.c.task, eval_results.c.metric)
    return [EvalResult(task=r.task, metric=r.metric, value=r.value, higher_is_better=r.higher_is_better,
                       num_samples=r.num_samples, stderr=r.stderr, details=r.details or {}, source=r.source,
                       created_at=r.created_at) for r in conn.execute(q)]


def lineage_links(conn: Connection, run_id: str) -> tuple[list[LineageLink], list[LineageLink]]:
    """(parents, children) of ``run_id``."""
    def links(cond: ColumnElement[bool]) -> list[LineageLink]:
        q = select(lineage).where(cond).order_by(lineage.c.created_at)
        return [LineageLink(parent_run_id=r.parent_run_id, child_run_id=r.child_run_id, relation=r.relation,
                            step=r.step, cycle=r.cycle, created_at=r.created_at) for r in conn.execute(q)]

    return links(lineage.c.child_run_id == run_id), links(lineage.c.parent_run_id == run_id)


# ---- metric series ---------------------------------------------------------------------------
def metric_spans(conn: Connection, pk: int) -> dict[str, tuple[int, int, int]]:
    """name -> (name_id, first_step, last_step) of every metric of a run (from metric_stats)."""
    q = (select(metric_names.c.name, metric_stats.c.name_id, metric_stats.c.first_step, metric_stats.c.last_step)
         .join(metric_names, metric_names.c.id == metric_stats.c.name_id)
         .where(metric_stats.c.run_pk == pk))
    return {n: (i, f, last) for n, i, f, last in conn.execute(q)}


def read_series(conn: Connection, pk: int, name: str, span: tuple[int, int, int], max_points: int,
                step_min: int | None = None, step_max: int | None = None) -> MetricSeries:
    """One series, bucketed in SQL to at most ``max_points`` points, each the mean (and min/max) of
    ``bucket_steps`` consecutive steps. A whole long series is read from the 64-step rollup
    blocks (64x fewer rows); a step window, or a series short enough for finer buckets, from the
    points themselves."""
    nid, first, last = span
    lo = max(first, step_min) if step_min is not None else first
    hi = min(last, step_max) if step_max is not None else last
    if hi < lo:
        return MetricSeries(name=name)
    width = max(1, math.ceil((hi - lo + 1) / max_points))
    # Rollups when they give at least half the resolution asked for (buckets of >= 32 steps).
    if (lo, hi) == (first, last) and 2 * width >= ROLLUP_STEPS:
        return _read_rollups(conn, pk, name, nid, first, last, max_points)
    where = and_(metrics.c.run_pk == pk, metrics.c.name_id == nid, metrics.c.step >= lo, metrics.c.step <= hi)
    if width == 1:
        rows = conn.execute(select(metrics.c.step, metrics.c.value).where(where).order_by(metrics.c.step)).all()
        return MetricSeries(name=name, steps=[s for s, _ in rows], values=[v for _, v in rows], points=len(rows))
    bucket = ((metrics.c.step - lo) // width).label("b")
    q = (select(func.min(metrics.c.step), func.avg(metrics.c.value), func.min(metrics.c.value),
                func.max(metrics.c.value), func.count())
         .where(where).group_by(bucket).order_by(bucket))
    return _bucketed(name, conn.execute(q).all(), width)


def _read_rollups(conn: Connection, pk: int, name: str, nid: int, first: int, last: int,
                  max_points: int) -> MetricSeries:
    """Output bucket i = rollup blocks [b0 + i·k, b0 + (i+1)·k): steps aligned to 64·k."""
    b0 = first // ROLLUP_STEPS
    k = max(1, math.ceil((last // ROLLUP_STEPS - b0 + 1) / max_points))
    r = metric_rollups.c
    bucket = ((r.bucket - b0) // k).label("b")
    q = (select(func.min(r.first_step), func.sum(r.vsum) / func.sum(r.n), func.min(r.vmin), func.max(r.vmax),
                func.sum(r.n))
         .where(r.run_pk == pk, r.name_id == nid).group_by(bucket).order_by(bucket))
    return _bucketed(name, conn.execute(q).all(), k * ROLLUP_STEPS)


def _bucketed(name: str, rows: Sequence[Row[Any]], width: int) -> MetricSeries:
    """rows: (first step, mean, min, max, count) per bucket."""
    down = any(r[4] > 1 for r in rows)
    return MetricSeries(
        name=name, steps=[r[0] for r in rows], values=[float(r[1]) for r in rows],
        mins=[r[2] for r in rows] if down else None, maxs=[r[3] for r in rows] if down else None,
        points=sum(r[4] for r in rows), downsampled=down, bucket_steps=width if down else 1,
    )


def series_for(conn: Connection, pk: int, run_id: str, names: Sequence[str], max_points: int,
               step_min: int | None = None, step_max: int | None = None, *, strict: bool = True) -> list[MetricSeries]:
    """Series of ``names`` (all when empty). ``strict``: an unknown name is a :class:`NotFound`
    listing the run's metrics; otherwise it is skipped."""
    spans = metric_spans(conn, pk)
    wanted = list(names) or sorted(spans)
    missing = [n for n in wanted if n not in spans]
    if missing and strict:
        have = ", ".join(sorted(spans)) or "none"
        raise NotFound(f"run {run_id!r} has no metric {', '.join(map(repr, missing))}; it has: {have}", param="names")
    return [read_series(conn, pk, n, spans[n], max_points, step_min, step_max) for n in wanted if n in spans]


# ---- comparison ------------------------------------------------------------------------------
def _rows_for(conn: Connection, run_ids: Sequence[str], *columns: Any) -> list[Row[Any]]:
    rows = {r.run_id: r for r in conn.execute(select(*SUMMARY_COLUMNS, *columns).where(runs.c.run_id.in_(run_ids)))}
    missing = [r for r in run_ids if r not in rows]
    if missing:
        raise NotFound(f"no run {', '.join(map(repr, missing))} in the registry", param="run_ids")
    return [rows[r] for r in run_ids]


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"lora": {"rank": 8}}`` -> ``{"lora.rank": 8}``; lists and scalars are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value} if prefix else {}


def config_diff(configs: dict[str, dict[str, Any]]) -> tuple[list[ConfigDiffRow], int]:
    """Keys whose values differ between runs (or that some runs lack), and how many are identical."""
    flat = {rid: flatten(cfg) for rid, cfg in configs.items()}
    keys = sorted({k for f in flat.values() for k in f})
    diff, same = [], 0
    for key in keys:
        values = {rid: f[key] for rid, f in flat.items() if key in f}
        canon = {json.dumps(v, sort_keys=True, default=str) for v in values.values()}
        if len(values) == len(flat) and len(canon) == 1:
            same += 1
        else:
            diff.append(ConfigDiffRow(key=key, values=values))
    return diff, same


def compare(db: Database, conn: Connection, req: RunCompareRequest) -> RunComparison:
    """Overlay series of ``req.metrics`` (default: the loss/reward family the runs have) and the
    config diff of the runs' specs plus their method, base model and backend."""
    rows = _rows_for(conn, req.run_ids, runs.c.spec)
    spans = {r.run_id: metric_spans(conn, r.pk) for r in rows}
    names = list(req.metrics)
    if not names:
        present = {n for s in spans.values() for n in s}
        names = [m for m in DEFAULT_COMPARE_METRICS if m in present]
        if not names:  # no familiar names: the metrics every run shares, first two by name
            common = set.intersection(*(set(s) for s in spans.values())) if spans else set()
            names = sorted(common)[:2]
    else:
        unknown = [n for n in names if not any(n in s for s in spans.values())]
        if unknown:
            raise NotFound(f"none of the runs has metric {', '.join(map(repr, unknown))}", param="metrics")
    series = {
        r.run_id: [read_series(conn, r.pk, n, spans[r.run_id][n], req.max_points) for n in names
                   if n in spans[r.run_id]]
        for r in rows
    }
    configs = {
        r.run_id: {**(r.spec or {}), "run": {"method": r.method, "base_model": r.base_model, "backend": r.backend}}
        for r in rows
    }
    diff, same = config_diff(configs)
    return RunComparison(runs=summaries(conn, rows), metrics=names, series=series, config_diff=diff,
                         identical_keys=same)


# ---- evaluation grid -------------------------------------------------------------------------
def eval_grid(db: Database, conn: Connection, req: EvalGridRequest) -> EvalGrid:
    """Runs × tasks of the cohort, the metric shown per task, and the best run of each task."""
    if req.run_ids:
        rows = _rows_for(conn, req.run_ids[: req.limit])
    else:
        search_req = (req.search or RunSearch()).model_copy(update={"has_eval": True, "limit": req.limit, "offset": 0,
                                                                     "facets": False})
        page_rows = conn.execute(
            select(*SUMMARY_COLUMNS)
            .where(_all(_conditions(db, runs, search_req)))
            .order_by(runs.c.created_at.desc(), runs.c.run_id.desc()).limit(req.limit)
        ).all()
        rows = list(page_rows)
    pks = {r.pk: r.run_id for r in rows}
    q = select(eval_results).where(eval_results.c.run_pk.in_(list(pks)))
    if req.tasks:
        q = q.where(eval_results.c.task.in_(req.tasks))
    by_task: dict[str, dict[str, list[Row[Any]]]] = {}
    for r in conn.execute(q):
        by_task.setdefault(r.task, {}).setdefault(r.metric, []).append(r)
    order = {r.run_id: i for i, r in enumerate(rows)}
    tasks: list[GridTask] = []
    cells: list[GridCell] = []
    for task in (req.tasks or sorted(by_task)):
        metrics_of = by_task.get(task, {})
        metric = req.metric if req.metric else (sorted(metrics_of)[0] if metrics_of else None)
        if metric is None or metric not in metrics_of:
            continue
        results = sorted(metrics_of[metric], key=lambda r: order[pks[r.run_pk]])
        hib = bool(results[0].higher_is_better)
        best = max(results, key=lambda r: r.value) if hib else min(results, key=lambda r: r.value)
        tasks.append(GridTask(task=task, metric=metric, higher_is_better=hib, best_run_id=pks[best.run_pk],
                              best_value=best.value))
        cells.extend(GridCell(run_id=pks[r.run_pk], task=task, metric=metric, value=r.value, stderr=r.stderr,
                              num_samples=r.num_samples, best=r.value == best.value) for r in results)
    return EvalGrid(runs=summaries(conn, rows), tasks=tasks, cells=cells)
