"""RAFT reward shaping gives each cycle exactly the threshold and kept fraction its strategy defines."""

from __future__ import annotations

import pytest
from halo_schemas.rl import ShapingSpec
from halo_training.shaping import CycleOutcome, Thresholds, cycle_thresholds

BASE = {"base_threshold": 0.6, "base_keep": 0.4}


def th(strategy: str, cycle: int, total: int = 5, history: list[CycleOutcome] | None = None, **kw: object) -> Thresholds:
    return cycle_thresholds(ShapingSpec(strategy=strategy, **kw), cycle=cycle, total_cycles=total,  # type: ignore[arg-type]
                            history=history or [], **BASE)


def approx(t: Thresholds) -> tuple[float, float]:
    return (round(t.threshold, 9), round(t.keep_fraction, 9))


def test_fixed_is_the_base_every_cycle() -> None:
    assert {approx(th("fixed", k)) for k in range(1, 6)} == {(0.6, 0.4)}


def test_annealing_moves_linearly_from_lenient_to_base() -> None:
    got = [approx(th("annealing", k, total=5, start_threshold=0.0, start_keep_fraction=0.8)) for k in range(1, 6)]
    assert got == [(0.0, 0.8), (0.15, 0.7), (0.3, 0.6), (0.45, 0.5), (0.6, 0.4)]
    assert approx(th("annealing", 1, total=1)) == (0.6, 0.4)  # a single cycle is the last one


def test_warmup_is_lenient_for_its_cycles_then_base() -> None:
    got = [approx(th("warmup", k, warmup_cycles=2, start_threshold=0.1, start_keep_fraction=0.9)) for k in range(1, 5)]
    assert got == [(0.1, 0.9), (0.1, 0.9), (0.6, 0.4), (0.6, 0.4)]


def test_adaptive_replays_the_history_of_pass_rates_and_kept_counts() -> None:
    kw = {"start_threshold": 0.5, "start_keep_fraction": 0.5, "adaptive_target_pass_rate": 0.3, "adaptive_step": 0.1,
          "adaptive_min_kept": 10}
    assert approx(th("adaptive", 1, **kw)) == (0.5, 0.5)  # cycle 1: the start values
    hist = [
        CycleOutcome(pass_rate=0.6, kept=40),  # > 1.5 x 0.3: stricter: threshold +0.1, keep -0.05
        CycleOutcome(pass_rate=0.3, kept=40),  # on target: unchanged
        CycleOutcome(pass_rate=0.1, kept=40),  # < 0.5 x 0.3: more lenient: threshold -0.1, keep +0.1
        CycleOutcome(pass_rate=0.3, kept=3),  # too few kept: more lenient
    ]
    got = [approx(th("adaptive", k, history=hist, **kw)) for k in range(1, 6)]
    assert got == [(0.5, 0.5), (0.6, 0.45), (0.6, 0.45), (0.5, 0.55), (0.4, 0.65)]


def test_adaptive_is_clamped() -> None:
    kw = {"start_threshold": 0.95, "start_keep_fraction": 0.25, "adaptive_step": 0.1, "adaptive_min_kept": 0}
    hist = [CycleOutcome(pass_rate=1.0, kept=100)] * 5
    t = th("adaptive", 6, total=6, history=hist, **kw)
    assert t.threshold == 1.0 and t.keep_fraction == pytest.approx(0.2)  # never above 1, never below 0.2
    low = [CycleOutcome(pass_rate=0.0, kept=0)] * 20
    t = th("adaptive", 21, total=21, history=low, start_threshold=0.3, start_keep_fraction=0.5)
    assert t.threshold == 0.0 and t.keep_fraction == 1.0
