"""Optuna studies of sweeps: storage next to the registry's database, samplers, pruners, read models.

::

    storage = open_storage(settings.database_url, settings.home)     # one per process
    study = create_study(storage, "sweep-…", sweep)                  # records the spec as a study attribute
    study = load_study(storage, "sweep-…")
    info = describe(storage, "sweep-…")                              # SweepInfo with trials, best, importances

**Where the trials live.** With ``HALO_DATABASE_URL`` pointing at PostgreSQL, Optuna's tables go into the
registry's database, in their own schema ``optuna`` (Optuna and the registry both keep an
``alembic_version`` table; one schema each keeps them apart). With the default SQLite, a database file *is*
the schema, so Optuna uses ``HALO_HOME/optuna.db`` next to the registry's ``forge.db``.
"""

from __future__ import annotations

import json
import logging
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from halo_common.errors import NotFound
from halo_schemas.sweeps import SweepInfo, SweepSpec, SweepTrial
from optuna.trial import FrozenTrial, TrialState

from halo_sweeps.core.space import grid_values

log = logging.getLogger("halo_sweeps")

#: PostgreSQL schema that holds Optuna's tables inside the registry's database.
PG_SCHEMA = "optuna"
#: Study user attributes (JSON values).
ATTR_SPEC, ATTR_CREATED, ATTR_JOB, ATTR_BEST_RUN = "halo_spec", "halo_created_at", "halo_job_id", "halo_best_run"
#: Trial user attributes.
T_JOB, T_RUN, T_SPEC, T_PRUNE, T_ERROR, T_ABANDONED = ("job_id", "run_id", "spec", "prune_requested_step", "error",
                                                       "abandoned")
#: Trial user attributes of an eval objective: the evaluation job of the trained trial and its run.
T_EVAL_JOB, T_EVAL_RUN = "eval_job_id", "eval_run_id"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage_url(database_url: str | None, home: Path) -> str:
    """Optuna's SQLAlchemy URL: the registry's PostgreSQL database (schema ``optuna``), else SQLite at
    ``home/optuna.db``. ``postgres://`` and ``postgresql://`` become the psycopg driver the registry uses."""
    if not database_url or database_url.startswith("sqlite"):
        if database_url and database_url not in ("sqlite://", "sqlite:///:memory:"):
            path = Path(database_url.split("sqlite:///", 1)[-1])
            return f"sqlite:///{path.with_name('optuna.db')}"
        return f"sqlite:///{Path(home).expanduser() / 'optuna.db'}"
    from sqlalchemy.engine import make_url

    url = database_url
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix):]
    # The registry's own search_path (if the URL sets one) is replaced: Optuna's tables go to their schema.
    parsed = make_url(url).update_query_dict({"options": f"-csearch_path={PG_SCHEMA}"})
    return parsed.render_as_string(hide_password=False)


def open_storage(database_url: str | None, home: Path) -> optuna.storages.RDBStorage:
    """Open (and create) Optuna's storage; for PostgreSQL the ``optuna`` schema is created first."""
    url = storage_url(database_url, home)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 30}}
    else:
        import sqlalchemy as sa

        engine = sa.create_engine(sa.engine.make_url(url).difference_update_query(["options"]))
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}")
        engine.dispose()
        kwargs = {"pool_pre_ping": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "heartbeat is experimental"
        storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    if url.startswith("sqlite"):
        _sqlite_wal(storage)
    return storage


def _sqlite_wal(storage: optuna.storages.RDBStorage) -> None:
    """WAL and ``synchronous=NORMAL``, as the registry's SQLite uses: a trial reports a value per step, and a
    full fsync per write (tens of ms) would leave the coordinator behind the trainer."""
    from sqlalchemy import event

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened during set-up get the pragmas too


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler for ask/tell: its ``after_trial`` stops ``study.optimize`` once the grid is used,
    which raises outside ``optimize``; the coordinator's budget (capped at the grid size) stops the sweep."""

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        return None


def make_sampler(sweep: SweepSpec, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sweep's sampler. ``offset`` (trials already in the study) moves the seed, so a restarted
    coordinator does not replay the same random draws."""
    seed = sweep.seed + offset
    if sweep.sampler == "grid":
        return GridSampler(grid_values(sweep.search_space), seed=seed)
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = max(2, min(10, sweep.n_trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def make_pruner(sweep: SweepSpec) -> optuna.pruners.BasePruner:
    p = sweep.pruning
    if p.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_steps)
    if p.kind == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource,
                                                      reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def create_study(storage: optuna.storages.RDBStorage, sweep_id: str, sweep: SweepSpec) -> optuna.Study:
    """A new study named ``sweep_id`` with the spec recorded as a study attribute."""
    study = optuna.create_study(storage=storage, study_name=sweep_id, direction=sweep.objective.direction,
                                sampler=make_sampler(sweep), pruner=make_pruner(sweep))
    study.set_user_attr(ATTR_SPEC, sweep.model_dump(mode="json"))
    study.set_user_attr(ATTR_CREATED, datetime.now(UTC).isoformat())
    return study


def sweep_of(storage: optuna.storages.RDBStorage, sweep_id: str) -> SweepSpec:
    try:
        study_id = storage.get_study_id_from_name(sweep_id)
    except KeyError:
        raise NotFound(f"no sweep {sweep_id!r}", param="sweep_id") from None
    return SweepSpec.model_validate(storage.get_study_user_attrs(study_id)[ATTR_SPEC])


def load_study(storage: optuna.storages.RDBStorage, sweep_id: str, *, offset: int = 0) -> optuna.Study:
    sweep = sweep_of(storage, sweep_id)
    return optuna.load_study(study_name=sweep_id, storage=storage, sampler=make_sampler(sweep, offset),
                             pruner=make_pruner(sweep))


# ---- read models ------------------------------------------------------------------------------------
def counts_toward_budget(t: FrozenTrial) -> bool:
    """Complete, pruned and failed trials use the budget; a trial abandoned before it ran (or cancelled with
    its sweep) does not: its point is tried again."""
    return t.state.is_finished() and not t.user_attrs.get(T_ABANDONED)


def used_budget(storage: optuna.storages.RDBStorage, sweep_id: str) -> int:
    """Trials of the sweep that used its budget."""
    trials = storage.get_all_trials(storage.get_study_id_from_name(sweep_id), deepcopy=False)
    return sum(1 for t in trials if counts_toward_budget(t))


def trial_view(t: FrozenTrial) -> SweepTrial:
    if t.user_attrs.get(T_ABANDONED):
        state = "failed"
    else:
        state = {TrialState.RUNNING: "running", TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
                 TrialState.FAIL: "failed", TrialState.WAITING: "waiting"}[t.state]
    steps = sorted(t.intermediate_values)
    return SweepTrial(number=t.number, state=state, params=dict(t.params),
                      value=t.value if t.state == TrialState.COMPLETE else None,
                      job_id=t.user_attrs.get(T_JOB), run_id=t.user_attrs.get(T_RUN),
                      last_step=steps[-1] if steps else None,
                      intermediate={s: t.intermediate_values[s] for s in steps}, error=t.user_attrs.get(T_ERROR))


def best_trial(trials: list[FrozenTrial], direction: str) -> FrozenTrial | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    return (min if direction == "minimize" else max)(complete, key=lambda t: (t.value, t.number))  # type: ignore[arg-type,return-value]


def importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's parameter importances (its default evaluator); empty until they can be computed."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < 2:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError) as exc:  # e.g. every complete trial has the same value
        log.debug("no importances for %s: %s", study.study_name, exc)
        return {}


def describe(storage: optuna.storages.RDBStorage, sweep_id: str, *, with_trials: bool = True) -> SweepInfo:
    """The sweep as stored (the coordinator's job state is added by the caller)."""
    sweep = sweep_of(storage, sweep_id)
    study_id = storage.get_study_id_from_name(sweep_id)
    attrs = storage.get_study_user_attrs(study_id)
    trials = storage.get_all_trials(study_id, deepcopy=False)
    counts: dict[str, int] = {}
    views = [trial_view(t) for t in trials]
    for v in views:
        counts[v.state] = counts.get(v.state, 0) + 1
    best = best_trial(trials, sweep.objective.direction)
    imp = importances(load_study(storage, sweep_id)) if with_trials else {}
    return SweepInfo(sweep_id=sweep_id, name=sweep.name, method=sweep.method, job_id=attrs.get(ATTR_JOB),
                     spec=sweep.model_dump(mode="json"), n_trials=sweep.n_trials,
                     created_at=datetime.fromisoformat(attrs[ATTR_CREATED]) if ATTR_CREATED in attrs else None,
                     counts=counts, trials=views if with_trials else [],
                     best=trial_view(best) if best else None, importances=imp)


def list_sweeps(storage: optuna.storages.RDBStorage, limit: int) -> list[str]:
    """Sweep ids, newest first."""
    names = [s.study_name for s in storage.get_all_studies() if ATTR_SPEC in s.user_attrs]
    return sorted(names, reverse=True)[:limit]  # sweep ids sort by creation time


def trial_spec(t: FrozenTrial) -> dict[str, Any]:
    spec = t.user_attrs.get(T_SPEC)
    return json.loads(spec) if isinstance(spec, str) else dict(spec or {})
