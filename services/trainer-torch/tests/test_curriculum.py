"""RAFT curricula select exactly the prompts their definitions say, from the prompts and the run's history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from halo_schemas.rl import CurriculumSpec
from halo_training.curriculum import (
    CycleHistory,
    PromptItem,
    PromptOutcome,
    adaptive_level,
    difficulty,
    load_historical_stats,
    progressive_fraction,
    select_prompts,
)

# Ten prompts, data order 0..9, difficulties deliberately not in data order (5 and 7 tie).
DIFF = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 7.0, 4.0, 6.0]
ITEMS = [PromptItem(i, d, f"p{i}") for i, d in enumerate(DIFF)]
EASIEST_FIRST = [1, 5, 3, 8, 0, 9, 4, 7, 6, 2]  # ties (4 and 7, both 7.0) keep data order


def choose(strategy: str, cycle: int = 1, total: int = 4, history: CycleHistory | None = None, **kw: object):  # noqa: ANN201
    return select_prompts(CurriculumSpec(strategy=strategy, **kw), ITEMS, cycle=cycle, total_cycles=total,  # type: ignore[arg-type]
                          history=history)


def test_difficulty_is_the_explicit_complexity_else_the_prompt_length() -> None:
    assert difficulty(3.5, "a long prompt") == 3.5
    assert difficulty(None, "abcd") == 4.0


def test_none_uses_every_prompt_in_data_order_unordered() -> None:
    c = choose("none", cycle=3)
    assert c.indices == list(range(10)) and c.ordered is False


def test_complexity_uses_every_prompt_easiest_first_in_every_cycle() -> None:
    for cycle in (1, 4):
        c = choose("complexity", cycle=cycle)
        assert c.indices == EASIEST_FIRST and c.ordered is True


def test_progressive_grows_the_easiest_fraction_to_all_prompts_in_the_last_cycle() -> None:
    # start 0.25 over 4 cycles: 0.25, 0.5, 0.75, 1.0 of 10 prompts -> ceil: 3, 5, 8, 10
    sizes = [len(choose("progressive", cycle=k, total=4, progressive_start=0.25).indices) for k in (1, 2, 3, 4)]
    assert sizes == [3, 5, 8, 10]
    assert choose("progressive", cycle=1, total=4, progressive_start=0.25).indices == [1, 5, 3]
    assert choose("progressive", cycle=2, total=4, progressive_start=0.25).indices == EASIEST_FIRST[:5]
    # an explicit increment caps at 100 %
    assert progressive_fraction(5, 10, 0.2, 0.3) == 1.0
    assert progressive_fraction(2, 10, 0.2, 0.3) == pytest.approx(0.5)
    assert progressive_fraction(1, 1, 0.34, None) == pytest.approx(0.34)


def test_adaptive_moves_its_window_with_the_last_pass_rates() -> None:
    spec = CurriculumSpec(strategy="adaptive", adaptive_start=0.25, adaptive_step=0.25, adaptive_raise_above=0.7,
                          adaptive_lower_below=0.2)
    assert adaptive_level([], spec) == 0.25
    assert adaptive_level([0.9], spec) == 0.5  # easy: harder
    assert adaptive_level([0.9, 0.9, 0.9], spec) == 1.0  # capped
    assert adaptive_level([0.1], spec) == 0.0  # struggling: easier
    assert adaptive_level([0.5], spec) == 0.25  # in the band: stay
    # window 0.4 of 10 = 4 prompts centred on level * 9 of the easiest-first ranking
    c1 = choose("adaptive", cycle=1, adaptive_window=0.4)
    assert c1.indices == EASIEST_FIRST[1:5] and c1.info["level"] == 0.25  # centre 2.25 -> ranks 1..4
    high = CycleHistory(pass_rates=[0.9, 0.95], outcomes=[{}, {}])
    c3 = choose("adaptive", cycle=3, history=high, adaptive_window=0.4)
    assert c3.info["level"] == 0.75 and c3.indices == EASIEST_FIRST[5:9]  # centre 6.75 -> ranks 5..8
    # Only the cycles before this one count, whatever else the history holds.
    assert choose("adaptive", cycle=1, history=high, adaptive_window=0.4).indices == c1.indices
    low = CycleHistory(pass_rates=[0.05], outcomes=[{}])
    assert choose("adaptive", cycle=2, history=low, adaptive_window=0.4).indices == EASIEST_FIRST[:4]


def test_historical_orders_by_success_rate_and_skips_mastered_prompts() -> None:
    hist = CycleHistory(
        pass_rates=[0.5, 0.5],
        outcomes=[
            {0: PromptOutcome(4, 1), 1: PromptOutcome(4, 4), 2: PromptOutcome(4, 0), 3: PromptOutcome(4, 2)},
            {0: PromptOutcome(4, 3), 1: PromptOutcome(4, 4), 3: PromptOutcome(4, 2)},
        ],
    )
    c = choose("historical", cycle=3, history=hist, historical_prior=0.4)
    # pooled rates: 0 -> 4/8 = .5, 1 -> 1.0 (mastered in its last cycle: skipped), 2 -> 0, 3 -> .5;
    # never seen (4..9) -> the prior 0.4; ties in data order.
    assert c.indices == [0, 3, 4, 5, 6, 7, 8, 9, 2]
    assert c.info["skipped_mastered"] == 1 and c.ordered is True
    keep = choose("historical", cycle=3, history=hist, historical_prior=0.4, skip_mastered=False)
    assert keep.indices[0] == 1 and len(keep.indices) == 10


def test_historical_keeps_practising_when_everything_is_mastered() -> None:
    hist = CycleHistory(pass_rates=[1.0], outcomes=[{i: PromptOutcome(2, 2) for i in range(10)}])
    assert sorted(choose("historical", cycle=2, history=hist).indices) == list(range(10))


def test_historical_is_seeded_by_an_earlier_runs_stats(tmp_path: Path) -> None:
    run = tmp_path / "run-old"
    run.mkdir()
    (run / "raft_prompt_stats.json").write_text(json.dumps({"prompts": {"p9": 0.9, "p2": 0.8}}))
    prior = load_historical_stats(str(run))
    assert prior == {"p9": 0.9, "p2": 0.8}
    c = select_prompts(CurriculumSpec(strategy="historical", historical_prior=0.5), ITEMS, cycle=1, total_cycles=3,
                       prior=prior)
    assert c.indices[:2] == [9, 2] and c.indices[2:] == [0, 1, 3, 4, 5, 6, 7, 8]
    assert load_historical_stats(str(tmp_path / "missing.json")) == {}


def test_curriculum_spec_rejects_inverted_adaptive_band() -> None:
    with pytest.raises(ValueError, match="adaptive_lower_below"):
        CurriculumSpec(strategy="adaptive", adaptive_lower_below=0.8, adaptive_raise_above=0.5)
