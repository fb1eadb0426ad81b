"""Prometheus metrics of trainer-torch (docs/metrics.md, trainer section): the set every trainer shares."""

from halo_training.metrics import Meters  # noqa: F401
