"""Typed client of the data service (synthesize, dedup, score, filter, decontaminate, recipes)::

    from halo_clients import DataClient

    data = DataClient(bus)
    submitted = await data.submit(DedupSpec(input="/data/raw.jsonl", method="fuzzy", threshold=0.85))
    report = await data.inspect(InspectRequest(path="/data/raw.jsonl"))
    dataset = await data.resolve("dataset:ds-…")          # DatasetInfo from the registry

Steps run as jobs on ``halo.job.data.<type>`` (their status and cancel go through :class:`JobsClient`); a step's
output is registered as a dataset whose id is in the job's summary (``dataset_id``).
"""

from __future__ import annotations

from typing import Any

from halo_bus import Bus, subjects
from halo_common.errors import NotFound
from halo_schemas.data import (
    DATASET_PREFIX,
    DatasetInfo,
    DecontaminateSpec,
    DedupSpec,
    FilterSpec,
    InspectReport,
    InspectRequest,
    RecipeSpec,
    ScoreSpec,
    SynthesizeSpec,
)
from halo_schemas.jobs import JobSubmitted

from halo_clients.jobs import JobsClient, choose_route
from halo_clients.registry import RegistryClient

DataSpecType = DedupSpec | DecontaminateSpec | ScoreSpec | FilterSpec | SynthesizeSpec | RecipeSpec

#: Job type of each spec model (halo.job.data.<type>).
JOB_TYPE_OF: dict[type, str] = {
    SynthesizeSpec: "data-synthesize", DedupSpec: "data-dedup", ScoreSpec: "data-score", FilterSpec: "data-filter",
    DecontaminateSpec: "data-decontaminate", RecipeSpec: "data-recipe",
}
#: Spec model of each job type (the gateway and the CLI parse bodies with it).
SPEC_OF: dict[str, type[DataSpecType]] = {v: k for k, v in JOB_TYPE_OF.items()}  # type: ignore[misc]


class DataClient:
    def __init__(self, bus: Bus, timeout: float = 600.0) -> None:
        self.bus, self.timeout = bus, timeout

    async def submit(self, spec: DataSpecType) -> JobSubmitted:
        """Queue one step (or a recipe) for the data service."""
        return await JobsClient(self.bus).submit(choose_route(JOB_TYPE_OF[type(spec)]), spec)

    async def inspect(self, req: InspectRequest) -> InspectReport:
        """Counts, formats, lengths and samples of a file the data service can read."""
        return await self.bus.request(subjects.DATA_INSPECT, req, InspectReport, timeout=self.timeout)

    async def resolve(self, ref: str) -> DatasetInfo:
        """The registered dataset ``dataset:<id>`` (or a bare id)."""
        return await RegistryClient(self.bus).dataset(ref.removeprefix(DATASET_PREFIX))


async def resolve_dataset_refs(bus: Bus, spec: Any) -> Any:
    """``spec`` with ``data.train`` / ``data.eval`` of the form ``dataset:<id>`` replaced by the registered file's
    path (a training spec may name a dataset made by the data pipeline). An unknown id is a 404 naming the field;
    a spec without such references is returned unchanged."""
    data = getattr(spec, "data", None)
    if data is None:
        return spec
    update: dict[str, str] = {}
    for field in ("train", "eval"):
        value = getattr(data, field, None)
        if isinstance(value, str) and value.startswith(DATASET_PREFIX):
            try:
                update[field] = (await RegistryClient(bus).dataset(value.removeprefix(DATASET_PREFIX))).path
            except NotFound as exc:
                raise NotFound(str(exc), param=f"data.{field}") from None
    if not update:
        return spec
    return spec.model_copy(update={"data": data.model_copy(update=update)})
