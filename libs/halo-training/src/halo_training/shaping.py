"""RAFT reward shaping: how strict each cycle's selection is, as pure functions of the cycle and history.

A cycle keeps the eligible samples whose total reward is at least ``threshold``, then the top ``keep_fraction``
of those by reward. Shaping moves both from lenient values (``start_threshold``, ``start_keep_fraction``)
towards the spec's ``reward_threshold`` / ``keep_top_fraction`` (the *base*)::

    s = cycle_thresholds(spec.shaping, base_threshold=0.5, base_keep=0.5, cycle=3, total_cycles=5,
                         history=[CycleOutcome(pass_rate=0.4, kept=12), ...])
    s.threshold, s.keep_fraction

* ``fixed``: the base values every cycle;
* ``annealing``: linear from the start values in cycle 1 to the base values in the last cycle;
* ``warmup``: the start values for ``warmup_cycles`` cycles, then the base values;
* ``adaptive``: the start values in cycle 1; after each cycle, when its pass rate was below half the target
  (or it kept fewer than ``adaptive_min_kept`` samples) the threshold drops by ``adaptive_step`` and the kept
  fraction grows by it; when the pass rate was above 1.5x the target the threshold rises by ``adaptive_step``
  and the fraction shrinks by half of it (never below 0.2); replayed from the history, so a resumed run
  computes the same values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from halo_schemas.rl import ShapingSpec

MIN_ADAPTIVE_KEEP = 0.2


@dataclass(frozen=True)
class CycleOutcome:
    """What a finished cycle's selection saw: its pass rate and how many samples it kept."""

    pass_rate: float
    kept: int


@dataclass(frozen=True)
class Thresholds:
    """Selection strictness of one cycle."""

    threshold: float
    keep_fraction: float


def _clamp(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


def cycle_thresholds(spec: ShapingSpec, *, base_threshold: float, base_keep: float, cycle: int, total_cycles: int,
                     history: Sequence[CycleOutcome] = ()) -> Thresholds:
    """Threshold and kept fraction of ``cycle`` (1-based); see the module docstring."""
    s = spec.strategy
    if s == "fixed":
        return Thresholds(base_threshold, base_keep)
    if s == "warmup":
        if cycle <= spec.warmup_cycles:
            return Thresholds(spec.start_threshold, spec.start_keep_fraction)
        return Thresholds(base_threshold, base_keep)
    if s == "annealing":
        progress = 1.0 if total_cycles <= 1 else (cycle - 1) / (total_cycles - 1)
        return Thresholds(
            spec.start_threshold + progress * (base_threshold - spec.start_threshold),
            spec.start_keep_fraction + progress * (base_keep - spec.start_keep_fraction),
        )
    if s == "adaptive":
        threshold, keep = spec.start_threshold, spec.start_keep_fraction
        target = spec.adaptive_target_pass_rate
        for past in history[: max(0, cycle - 1)]:
            if past.kept < spec.adaptive_min_kept or past.pass_rate < 0.5 * target:
                threshold = _clamp(threshold - spec.adaptive_step, 0.0, 1.0)
                keep = _clamp(keep + spec.adaptive_step, MIN_ADAPTIVE_KEEP, 1.0)
            elif past.pass_rate > 1.5 * target:
                threshold = _clamp(threshold + spec.adaptive_step, 0.0, 1.0)
                keep = _clamp(keep - 0.5 * spec.adaptive_step, MIN_ADAPTIVE_KEEP, 1.0)
        return Thresholds(threshold, keep)
    raise ValueError(f"unknown shaping strategy {s!r}")
