"""Settings of sweeps (environment prefix ``HALO_SWEEPS_``)."""

from __future__ import annotations

from halo_common.settings import HaloSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class SweepsSettings(HaloSettings):
    """Environment: ``HALO_SWEEPS_*``; shared ``HALO_HOME`` / ``HALO_NATS_URL`` / ``HALO_DATABASE_URL`` keep their
    names (Optuna's storage sits next to the registry's database: see ``halo_sweeps.core.study``)."""

    model_config = SettingsConfigDict(env_prefix="HALO_SWEEPS_", extra="ignore", validate_default=True)

    rpc_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of the requests this service makes.")
    job_ack_wait_s: float = Field(
        default=10.0, gt=0, le=600,
        description="Coordinator lease: a sweep whose coordinator stops heartbeating (killed) is picked up again "
        "after this many seconds.")
    job_max_deliver: int = Field(default=50, ge=1, description="Coordinator deliveries (first + resumes) before "
                                 "a sweep is given up.")
    max_concurrent_sweeps: int = Field(default=4, ge=1, le=64, description="Sweeps coordinated at once by this "
                                       "process (each is mostly waiting on its trials).")
    poll_s: float = Field(default=2.0, gt=0, description="Seconds between checks of the trials' job states (a "
                          "safety net under the run events).")
    trial_slots: int | None = Field(
        default=None, ge=1, le=64, description="Trials the host runs at once (a sweep's parallel_trials above it is "
        "refused unless it sets oversubscribe). None: the accelerator devices of this host (1 on CPU); set it when "
        "the trainers run on another host than this service.")
    status_interval_s: float = Field(default=2.0, gt=0, description="Seconds between coordinator heartbeats.")
