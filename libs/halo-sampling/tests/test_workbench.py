"""Degenerate-signal detection of the reward workbench (pure functions, exact values)."""

from __future__ import annotations

import math

import pytest
from halo_sampling.workbench import PromptRewards, analyze_rewards, histogram, pearson, ranks, spearman


def group(rewards: list[float], lengths: list[int] | None = None, **kw: object) -> PromptRewards:
    return PromptRewards(prompt="p", rewards=rewards, lengths=lengths or [10] * len(rewards), **kw)


def codes(report) -> list[str]:  # noqa: ANN001
    return [w.code for w in report.warnings]


def test_statistics_are_exact() -> None:
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None
    assert ranks([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear
    bins = histogram([0.0, 0.05, 0.5, 1.0], bins=10)
    assert [b.count for b in bins] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert bins[0].lo == 0.0 and bins[-1].hi == pytest.approx(1.0)


def test_a_healthy_signal_raises_no_warning() -> None:
    report = analyze_rewards([
        group([1.0, 0.0, 1.0, 0.0], [12, 11, 10, 13]),
        group([0.0, 1.0, 0.5, 0.0], [9, 14, 11, 10]),
        group([0.25, 0.75, 1.0, 0.0], [10, 12, 11, 9]),
    ])
    assert report.warnings == []
    assert report.num_prompts == 3 and report.num_samples == 12
    assert report.mean == pytest.approx(5.5 / 12)
    assert report.flat_group_fraction == 0.0 and report.zero_fraction == pytest.approx(5 / 12)
    assert report.prompts[0].std == pytest.approx(0.5)


def test_all_zero() -> None:
    report = analyze_rewards([group([0.0] * 4), group([0.0] * 4)])
    assert codes(report) == ["all_zero"] and report.max == 0.0


def test_all_equal_nonzero_says_already_solved() -> None:
    report = analyze_rewards([group([1.0] * 3), group([1.0] * 3)])
    assert codes(report) == ["all_equal"] and "already solved" in report.warnings[0].message


def test_flat_groups_give_grpo_no_advantage() -> None:
    # Rewards vary across prompts but never within one: every GRPO advantage is 0.
    report = analyze_rewards([group([1.0] * 4), group([0.0] * 4), group([1.0, 0.0, 1.0, 1.0])])
    assert codes(report) == ["flat_groups"]
    assert report.flat_group_fraction == pytest.approx(2 / 3)
    assert analyze_rewards([group([1.0] * 4), group([0.0, 1.0, 0.0, 1.0])], flat_group_fraction=0.6).warnings == []


def test_reward_correlated_with_length() -> None:
    lengths = [5, 10, 20, 40, 80, 160, 200, 250]
    rewards = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 1.0]
    report = analyze_rewards([group(rewards[:4], lengths[:4]), group(rewards[4:], lengths[4:])])
    assert "length_correlated" in codes(report)
    w = next(w for w in report.warnings if w.code == "length_correlated")
    assert w.value == pytest.approx(1.0) and "longer" in w.message
    assert report.length_spearman == pytest.approx(1.0) and 0.9 < report.length_pearson < 1.0
    # Negative correlation: "shorter".
    neg = analyze_rewards([group(rewards[::-1][:4], lengths[:4]), group(rewards[::-1][4:], lengths[4:])])
    assert "shorter" in next(w for w in neg.warnings if w.code == "length_correlated").message
    # Too few samples: no claim.
    assert "length_correlated" not in codes(analyze_rewards([group([0.0, 1.0, 0.5], [1, 3, 2])]))


def test_verifier_errors_and_truncation() -> None:
    report = analyze_rewards([
        group([0.0, 1.0, 0.0, 0.5], finish_reasons=["length", "length", "length", "stop"],
              errors=["unavailable", None, "unavailable", None]),
    ])
    assert codes(report) == ["verifier_errors", "truncated"]
    assert report.error_fraction == 0.5 and report.truncated_fraction == 0.75
    assert "unavailable" in report.warnings[0].message


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="no rewards"):
        analyze_rewards([])
    with pytest.raises(ValueError, match="2 rewards but 1 lengths"):
        analyze_rewards([PromptRewards(prompt="p", rewards=[1.0, 0.0], lengths=[3])])
    assert math.isclose(analyze_rewards([group([0.5])]).std, 0.0)
