import pytest
from halo_verifiers.base import Ladder, compile_reward, pass_rate_reward, run_reward
from halo_verifiers.matching import MatchParams, outputs_match


def test_ladder_values_are_the_documented_ones() -> None:
    assert (Ladder.COMPILE_FAILED, Ladder.COMPILED_WITH_WARNINGS, Ladder.COMPILED_CLEAN, Ladder.RAN, Ladder.CORRECT) == (
        0.0, 0.3, 0.5, 0.7, 1.0)
    assert compile_reward(True) == 0.3 and compile_reward(False) == 0.5


def test_pass_rate_reward_partial_and_strict() -> None:
    assert pass_rate_reward(3, 4) == pytest.approx(0.875)
    assert pass_rate_reward(0, 4) == 0.5
    assert pass_rate_reward(4, 4) == 1.0
    assert pass_rate_reward(3, 4, partial_credit=False) == 0.5
    assert pass_rate_reward(4, 4, partial_credit=False) == 1.0


def test_run_reward_climbs_monotonically() -> None:
    assert run_reward(0.5, 4, 4, 4, True) == 1.0
    assert run_reward(0.5, 4, 4, 0, True) == pytest.approx(0.7)
    assert run_reward(0.5, 4, 0, 0, True) == 0.5
    assert run_reward(0.3, 4, 4, 2, True) == pytest.approx(0.85)
    assert run_reward(0.5, 2, 1, 1, True) == pytest.approx(0.5 + 0.1 + 0.15)
    # nothing to compare: 0.7 is the top
    assert run_reward(0.5, 1, 1, 1, False) == pytest.approx(0.7)
    assert run_reward(0.5, 2, 1, 1, True, partial_credit=False) == 0.5
    assert run_reward(0.5, 2, 2, 1, True, partial_credit=False) == 0.7


@pytest.mark.parametrize(
    ("actual", "expected", "params", "ok"),
    [
        ("3\r\n", "3", MatchParams(), True),
        ("a  \nb\n\n", "a\nb", MatchParams(), True),
        ("A", "a", MatchParams(), False),
        ("A", "a", MatchParams(ignore_case=True), True),
        ("the answer is 42.", "42", MatchParams(mode="contains"), True),
        ("result: 17 items", r"result: \d+ items", MatchParams(mode="regex"), True),
        ("result: 17 items!", r"result: \d+ items", MatchParams(mode="regex"), False),
        ("3.14159265", "3.1416", MatchParams(mode="numeric", rel_tol=1e-4), True),
        ("3.14159265", "3.1416", MatchParams(mode="numeric"), False),
        ("x=1 y=2", "1 2", MatchParams(mode="numeric"), True),
        ("1 2 3", "1 2", MatchParams(mode="numeric"), False),
        ("nan", "NaN", MatchParams(mode="numeric"), True),
        ("-1e3", "-1000", MatchParams(mode="numeric"), True),
    ],
)
def test_match_modes(actual: str, expected: str, params: MatchParams, ok: bool) -> None:
    assert outputs_match(actual, expected, params) is ok
