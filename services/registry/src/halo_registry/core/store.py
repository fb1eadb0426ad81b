"""The registry's core facade: one object the handlers (and tests, and the benchmark) call.

    store = RegistryStore.open(database_url=None, home=Path("~/.halo-forge").expanduser())
    store.apply_events(events)
    page = store.search(RunSearch(status=["succeeded"], sort="-created_at", limit=20))

Synchronous and thread-safe: the service calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from halo_common.errors import BadRequest
from halo_common.paths import HaloPaths
from halo_schemas.data import DatasetInfo, DatasetList, DatasetListRequest, DatasetRegisterRequest
from halo_schemas.events import RunEvent
from halo_schemas.registry import (
    ArtifactDeleted,
    ArtifactDeleteRequest,
    ArtifactList,
    ArtifactSearch,
    EvalGrid,
    EvalGridRequest,
    EvalRecorded,
    EvalRecordRequest,
    RunBundle,
    RunBundleRequest,
    RunCompareRequest,
    RunComparison,
    RunCost,
    RunCostRequest,
    RunDeleted,
    RunDeleteRequest,
    RunDetail,
    RunImported,
    RunImportRequest,
    RunMetrics,
    RunMetricsRequest,
    RunNoteRequest,
    RunSearch,
    RunsPage,
    RunSummary,
    RunTagRequest,
)
from halo_schemas.replay import ReplayInfo
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from halo_registry.core import bundles, cost, datasets, mutations, queries
from halo_registry.core.cost import DEFAULT_NOMINAL_WATTS
from halo_registry.core.db import Database, open_database, runs
from halo_registry.core.ingest import IngestStats, apply_events
from halo_registry.core.replay import REPLAY_FILE, load_replay


@dataclass(frozen=True)
class CostConfig:
    """How energy becomes money: price per kWh, currency, nominal watts per backend."""

    price_per_kwh: float = 0.30
    currency: str = "USD"
    nominal_watts: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_NOMINAL_WATTS))


class RegistryStore:
    """Everything the registry does, over one :class:`Database` and one HALO_HOME."""

    def __init__(self, db: Database, paths: HaloPaths, costs: CostConfig | None = None, version: str = "0") -> None:
        self.db = db
        self.paths = paths
        self.costs = costs or CostConfig()
        self.version = version

    @classmethod
    def open(cls, database_url: str | None, home: Path, *, costs: CostConfig | None = None,
             version: str = "0") -> RegistryStore:
        """Open (and migrate) the database: ``database_url`` or SQLite at ``home/forge.db``."""
        paths = HaloPaths(Path(home).expanduser())
        return cls(open_database(database_url, paths.home), paths, costs, version)

    def close(self) -> None:
        self.db.dispose()

    def run_dir(self, run_id: str) -> Path:
        """``HALO_HOME/runs/<run_id>``; a 400 naming ``run_id`` unless it is a valid id (halo_common.ids)."""
        return self.paths.run_dir(run_id)

    # ---- datasets ----------------------------------------------------------------------------
    def register_dataset(self, req: DatasetRegisterRequest) -> DatasetInfo:
        return datasets.register(self.db, req)

    def dataset(self, dataset_id: str) -> DatasetInfo:
        return datasets.get(self.db, dataset_id)

    def list_datasets(self, req: DatasetListRequest) -> DatasetList:
        return datasets.list_datasets(self.db, req)

    # ---- ingest ------------------------------------------------------------------------------
    def apply_events(self, events: Sequence[RunEvent]) -> IngestStats:
        return apply_events(self.db, events)

    # ---- queries -----------------------------------------------------------------------------
    def search(self, req: RunSearch) -> RunsPage:
        with self.db.read() as conn:
            return queries.search(self.db, conn, req)

    def summary(self, run_id: str) -> RunSummary:
        with self.db.read() as conn:
            return queries.run_summary(conn, run_id)

    def get(self, run_id: str) -> RunDetail:
        with self.db.read() as conn:
            return self._detail(conn, run_id)[1]

    def _detail(self, conn: Connection, run_id: str) -> tuple[int, RunDetail]:
        """(pk, detail) of a run."""
        row = queries.run_row(conn, run_id, runs.c.spec, runs.c.summary, runs.c.notes)
        summary = queries.summaries(conn, [row])[0]
        parents, children = queries.lineage_links(conn, run_id)
        run_dir = self.run_dir(run_id)
        return row.pk, RunDetail(
            run=summary, spec=row.spec or {}, summary=row.summary or {}, notes=row.notes or "",
            metrics=queries.metric_infos(conn, row.pk), artifacts=queries.artifact_infos(conn, row.pk),
            evals=queries.eval_infos(conn, row.pk), parents=parents, children=children,
            cost=self._cost(conn, row.pk, summary, None), run_dir=str(run_dir),
            has_replay=(run_dir / REPLAY_FILE).is_file(),
        )

    # ---- artifacts ---------------------------------------------------------------------------
    def artifacts(self, req: ArtifactSearch) -> ArtifactList:
        with self.db.read() as conn:
            return ArtifactList(artifacts=queries.search_artifacts(conn, req))

    def artifact(self, artifact_id: int) -> ArtifactList:
        with self.db.read() as conn:
            return ArtifactList(artifacts=[queries.artifact_by_id(conn, artifact_id)])

    def delete_artifact(self, req: ArtifactDeleteRequest) -> ArtifactDeleted:
        return mutations.delete_artifact(self.db, self.paths.home, req)

    def metrics(self, req: RunMetricsRequest) -> RunMetrics:
        if req.step_min is not None and req.step_max is not None and req.step_max < req.step_min:
            raise BadRequest("step_max must be >= step_min", param="step_max")
        with self.db.read() as conn:
            row = queries.run_row(conn, req.run_id)
            series = queries.series_for(conn, row.pk, req.run_id, req.names, req.max_points, req.step_min, req.step_max)
        return RunMetrics(run_id=req.run_id, series=series)

    def compare(self, req: RunCompareRequest) -> RunComparison:
        with self.db.read() as conn:
            return queries.compare(self.db, conn, req)

    def grid(self, req: EvalGridRequest) -> EvalGrid:
        with self.db.read() as conn:
            return queries.eval_grid(self.db, conn, req)

    def cost(self, req: RunCostRequest) -> RunCost:
        with self.db.read() as conn:
            row = queries.run_row(conn, req.run_id)
            return self._cost(conn, row.pk, queries.summaries(conn, [row])[0], req.price_per_kwh)

    def _cost(self, conn: Connection, pk: int, summary: RunSummary, price: float | None) -> RunCost:
        c = self.costs
        return cost.run_cost(conn, pk, summary, price_per_kwh=c.price_per_kwh if price is None else price,
                             currency=c.currency, nominal_watts=c.nominal_watts)

    def count_by_status(self) -> dict[str, int]:
        with self.db.read() as conn:
            return dict(conn.execute(select(runs.c.status, func.count()).group_by(runs.c.status)).all())

    # ---- mutations ---------------------------------------------------------------------------
    def record_eval(self, req: EvalRecordRequest) -> EvalRecorded:
        with self.db.write() as conn:
            n = mutations.record_eval(conn, self.db, req)
        return EvalRecorded(run_id=req.run_id, recorded=n)

    def tag(self, req: RunTagRequest) -> RunSummary:
        with self.db.write() as conn:
            mutations.tag(conn, self.db, req)
        return self.summary(req.run_id)

    def note(self, req: RunNoteRequest) -> RunSummary:
        with self.db.write() as conn:
            mutations.note(conn, req)
        return self.summary(req.run_id)

    def delete(self, req: RunDeleteRequest) -> RunDeleted:
        return mutations.delete_run(self.db, self.paths.home, self.run_dir(req.run_id), req)

    # ---- bundles and replay ------------------------------------------------------------------
    @property
    def bundles_dir(self) -> Path:
        return self.paths.home / "bundles"

    def bundle(self, req: RunBundleRequest) -> RunBundle:
        with self.db.read() as conn:
            pk, detail = self._detail(conn, req.run_id)
            return bundles.make_bundle(conn, pk, detail, self.run_dir(req.run_id), self.bundles_dir,
                                       include_adapter=req.include_adapter, include_artifacts=req.include_artifacts,
                                       created_by=bundles.created_by(self.version))

    def import_bundle(self, req: RunImportRequest) -> RunImported:
        run_id, files = bundles.import_bundle(self.db, Path(req.path).expanduser(), self.paths, replace=req.replace)
        return RunImported(run_id=run_id, run=self.summary(run_id), files=files)

    def replay(self, run_id: str) -> ReplayInfo:
        return load_replay(run_id, self.run_dir(run_id))
