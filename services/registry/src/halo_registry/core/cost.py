"""Energy and cost of a run.

Measured when the run logged ``power_watts`` with its progress metrics: the time-weighted mean of
the samples (trapezoids between consecutive samples) times the run's duration. Otherwise nominal:
the backend's nominal power times the duration. Either way ``kWh × price_per_kwh``, reported with
its source so nobody mistakes an estimate for a measurement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from halo_schemas.registry import RunCost, RunSummary
from sqlalchemy import select
from sqlalchemy.engine import Connection

from halo_registry.core.db import power_samples

#: Whole-machine draw while training, in watts, when nothing was measured. Rough on purpose:
#: one mid-range accelerator plus host. Override with HALO_REGISTRY_NOMINAL_WATTS.
DEFAULT_NOMINAL_WATTS: dict[str, float] = {"cuda": 350.0, "rocm": 350.0, "mps": 40.0, "mlx": 40.0, "cpu": 65.0}
JOULES_PER_KWH = 3.6e6


def mean_power(samples: Sequence[tuple[datetime, float]]) -> float | None:
    """Time-weighted mean of ``(ts, watts)`` samples; the plain mean when they share one time."""
    if not samples:
        return None
    pts = sorted(samples)
    span = (pts[-1][0] - pts[0][0]).total_seconds()
    if span <= 0:
        return sum(w for _, w in pts) / len(pts)
    joules = sum((w0 + w1) / 2 * (t1 - t0).total_seconds() for (t0, w0), (t1, w1) in zip(pts, pts[1:], strict=False))
    return joules / span


def compute_cost(
    run_id: str,
    *,
    backend: str | None,
    duration_s: float | None,
    samples: Sequence[tuple[datetime, float]],
    price_per_kwh: float,
    currency: str,
    nominal_watts: Mapping[str, float],
) -> RunCost:
    """Pure cost computation (see module doc). Without a duration, measured samples still give one
    from their own span."""
    watts = mean_power(samples)
    source = "measured"
    if watts is not None and duration_s is None and len(samples) > 1:
        duration_s = (max(t for t, _ in samples) - min(t for t, _ in samples)).total_seconds()
    if watts is None:
        source = "nominal"
        watts = nominal_watts.get(backend or "", nominal_watts.get("cpu"))
    if duration_s is None or watts is None:
        return RunCost(run_id=run_id, source="unknown", currency=currency, price_per_kwh=price_per_kwh,
                       backend=backend, samples=len(samples))
    kwh = watts * duration_s / JOULES_PER_KWH
    return RunCost(
        run_id=run_id, source=source, kwh=kwh, cost=kwh * price_per_kwh, currency=currency,
        price_per_kwh=price_per_kwh, duration_s=duration_s, avg_watts=watts,
        samples=len(samples) if source == "measured" else 0, backend=backend,
    )


def run_cost(conn: Connection, pk: int, summary: RunSummary, *, price_per_kwh: float, currency: str,
             nominal_watts: Mapping[str, float]) -> RunCost:
    """Cost of a stored run (``pk`` and its summary, whose duration covers a running run too)."""
    samples = [(ts, w) for ts, w in conn.execute(
        select(power_samples.c.ts, power_samples.c.watts).where(power_samples.c.run_pk == pk))]
    return compute_cost(summary.run_id, backend=summary.backend, duration_s=summary.duration_s, samples=samples,
                        price_per_kwh=price_per_kwh, currency=currency, nominal_watts=nominal_watts)
