"""The worker's own check of a job that arrived over the bus: :func:`halo_training.policy.spec_guard`, shared by
every trainer. Re-exported here."""

from halo_training.policy import SpecGuard, spec_guard  # noqa: F401
