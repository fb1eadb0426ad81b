"""Prometheus metrics of trainer-mlx (docs/metrics.md, trainer section): the set every trainer shares. MLX memory
(active / peak) is reported per step in the run's metrics (``mlx_active_memory_bytes``, ``mlx_peak_memory_bytes``)."""

from halo_training.metrics import Meters  # noqa: F401
