"""Typed client of the registry for other services::

    from halo_clients import RegistryClient

    registry = RegistryClient(bus)
    await registry.record_eval("run-…", [EvalResultIn(task="gsm8k", metric="accuracy", value=0.41)])
    page = await registry.search(RunSearch(method=["sft"], limit=10))

Every method is one request/reply on a ``halo.rpc.registry.*`` subject; errors arrive as the
registry raised them (NotFound, BadRequest…), an absent registry as Unavailable.
"""

from __future__ import annotations

from collections.abc import Sequence

from halo_bus import Bus, subjects
from halo_schemas.data import DatasetInfo, DatasetList, DatasetListRequest, DatasetRef, DatasetRegisterRequest
from halo_schemas.registry import (
    ArtifactDeleted,
    ArtifactDeleteRequest,
    ArtifactInfo,
    ArtifactList,
    ArtifactRef,
    ArtifactSearch,
    EvalGrid,
    EvalGridRequest,
    EvalRecorded,
    EvalRecordRequest,
    EvalResultIn,
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
    RunRef,
    RunSearch,
    RunsPage,
    RunSummary,
    RunTagRequest,
)
from halo_schemas.replay import ReplayInfo


class RegistryClient:
    """Async client over a :class:`~halo_bus.Bus`. ``timeout`` bounds each request (bundles and
    imports get ``long_timeout``: they copy files)."""

    def __init__(self, bus: Bus, timeout: float = 10.0, long_timeout: float = 300.0) -> None:
        self.bus, self.timeout, self.long_timeout = bus, timeout, long_timeout

    async def search(self, req: RunSearch | None = None) -> RunsPage:
        return await self.bus.request(subjects.REGISTRY_QUERY_RUNS, req or RunSearch(), RunsPage, self.timeout)

    async def artifacts(self, req: ArtifactSearch | None = None) -> ArtifactList:
        """Artifacts of every run (exports, merges, adapters…), newest first."""
        return await self.bus.request(subjects.REGISTRY_ARTIFACTS, req or ArtifactSearch(), ArtifactList, self.timeout)

    async def artifact(self, artifact_id: int) -> ArtifactInfo:
        found = await self.bus.request(subjects.REGISTRY_ARTIFACT_GET, ArtifactRef(id=artifact_id), ArtifactList,
                                       self.timeout)
        return found.artifacts[0]

    async def delete_artifact(self, artifact_id: int, keep_files: bool = True) -> ArtifactDeleted:
        req = ArtifactDeleteRequest(id=artifact_id, keep_files=keep_files)
        return await self.bus.request(subjects.REGISTRY_ARTIFACT_DELETE, req, ArtifactDeleted, self.long_timeout)

    async def get(self, run_id: str) -> RunDetail:
        return await self.bus.request(subjects.REGISTRY_RUN_GET, RunRef(run_id=run_id), RunDetail, self.timeout)

    async def metrics(self, run_id: str, names: Sequence[str] = (), max_points: int = 1000,
                      step_min: int | None = None, step_max: int | None = None) -> RunMetrics:
        req = RunMetricsRequest(run_id=run_id, names=list(names), max_points=max_points, step_min=step_min,
                                step_max=step_max)
        return await self.bus.request(subjects.REGISTRY_RUN_METRICS, req, RunMetrics, self.timeout)

    async def compare(self, run_ids: Sequence[str], metrics: Sequence[str] = (), max_points: int = 500) -> RunComparison:
        req = RunCompareRequest(run_ids=list(run_ids), metrics=list(metrics), max_points=max_points)
        return await self.bus.request(subjects.REGISTRY_RUNS_COMPARE, req, RunComparison, self.timeout)

    async def grid(self, req: EvalGridRequest) -> EvalGrid:
        return await self.bus.request(subjects.REGISTRY_EVAL_GRID, req, EvalGrid, self.timeout)

    async def record_eval(self, run_id: str, results: Sequence[EvalResultIn], source: str = "eval") -> EvalRecorded:
        req = EvalRecordRequest(run_id=run_id, results=list(results), source=source)
        return await self.bus.request(subjects.REGISTRY_EVAL_RECORD, req, EvalRecorded, self.timeout)

    async def tag(self, run_id: str, add: Sequence[str] = (), remove: Sequence[str] = ()) -> RunSummary:
        req = RunTagRequest(run_id=run_id, add=list(add), remove=list(remove))
        return await self.bus.request(subjects.REGISTRY_RUN_TAG, req, RunSummary, self.timeout)

    async def note(self, run_id: str, notes: str, append: bool = False) -> RunSummary:
        req = RunNoteRequest(run_id=run_id, notes=notes, append=append)
        return await self.bus.request(subjects.REGISTRY_RUN_NOTE, req, RunSummary, self.timeout)

    async def delete(self, run_id: str, keep_artifacts: bool = True, force: bool = False) -> RunDeleted:
        req = RunDeleteRequest(run_id=run_id, keep_artifacts=keep_artifacts, force=force)
        return await self.bus.request(subjects.REGISTRY_RUN_DELETE, req, RunDeleted, self.timeout)

    async def cost(self, run_id: str, price_per_kwh: float | None = None) -> RunCost:
        req = RunCostRequest(run_id=run_id, price_per_kwh=price_per_kwh)
        return await self.bus.request(subjects.REGISTRY_RUN_COST, req, RunCost, self.timeout)

    async def bundle(self, run_id: str, include_adapter: bool = True, include_artifacts: bool = False) -> RunBundle:
        req = RunBundleRequest(run_id=run_id, include_adapter=include_adapter, include_artifacts=include_artifacts)
        return await self.bus.request(subjects.REGISTRY_RUN_BUNDLE, req, RunBundle, self.long_timeout)

    async def import_bundle(self, path: str, replace: bool = False) -> RunImported:
        req = RunImportRequest(path=path, replace=replace)
        return await self.bus.request(subjects.REGISTRY_RUN_IMPORT, req, RunImported, self.long_timeout)

    async def replay(self, run_id: str) -> ReplayInfo:
        return await self.bus.request(subjects.REGISTRY_RUN_REPLAY, RunRef(run_id=run_id), ReplayInfo, self.timeout)

    async def register_dataset(self, req: DatasetRegisterRequest) -> DatasetInfo:
        """Record a dataset file (the same path and sha256 again returns the existing record)."""
        return await self.bus.request(subjects.REGISTRY_DATASET_REGISTER, req, DatasetInfo, self.timeout)

    async def dataset(self, dataset_id: str) -> DatasetInfo:
        """One dataset; ``dataset_id`` may carry the ``dataset:`` prefix."""
        return await self.bus.request(subjects.REGISTRY_DATASET_GET, DatasetRef(dataset_id=dataset_id), DatasetInfo,
                                      self.timeout)

    async def datasets(self, req: DatasetListRequest | None = None) -> DatasetList:
        return await self.bus.request(subjects.REGISTRY_DATASET_LIST, req or DatasetListRequest(), DatasetList,
                                      self.timeout)
