"""The worker's own check of a job that arrived over the bus (defence in depth behind the gateway).

``spec_guard(settings)`` returns the callable a trainer's ``run_job`` (and its dry-run
preview) calls on the validated spec: it refuses code execution unless this worker's ``HALO_ALLOW_REMOTE_CODE``
is on, ``trust_remote_code`` for a model inside an imported bundle always, and relative paths (the worker
never resolves them against its own working directory). A refused job ends ``failed`` with the reason,
before anything is loaded.
"""

from __future__ import annotations

from collections.abc import Callable

from halo_common.settings import HaloSettings
from halo_common.specpolicy import check_spec_policy
from halo_schemas.training import TrainSpecBase

SpecGuard = Callable[[TrainSpecBase], None]


def spec_guard(settings: HaloSettings) -> SpecGuard:
    """The policy of the worker configured by ``settings`` (its ``allow_remote_code`` and HALO_HOME)."""

    def guard(spec: TrainSpecBase) -> None:
        check_spec_policy(code_requests=spec.code_requests(), model_refs=spec.model_refs(),
                          data_refs=spec.data_refs(), allow_remote_code=settings.allow_remote_code,
                          paths=settings.paths)

    return guard
