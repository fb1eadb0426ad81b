"""pass@k: the unbiased estimator against hand-computed values, k > n refused, stages mapped from verifier
results, and the pipelined sample-then-verify loop keeping every sample in its problem."""

from __future__ import annotations

from math import comb

import pytest
from halo_common.errors import BadRequest
from halo_eval.core.passk import (
    SampleOutcome,
    outcome_from_verifier,
    parse_ks,
    pass_at_k,
    summarize_passk,
)
from halo_eval.core.passk_run import run_passk
from halo_eval.core.problems import Problem


def test_estimator_matches_hand_computed_values() -> None:
    # 1 - C(7,5)/C(10,5) = 1 - 21/252
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252, abs=1e-12)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-12)          # pass@1 is c/n
    assert pass_at_k(20, 1, 10) == pytest.approx(1 - comb(19, 10) / comb(20, 10), abs=1e-12)  # = 0.5
    assert pass_at_k(20, 1, 10) == pytest.approx(0.5, abs=1e-12)
    assert pass_at_k(5, 0, 3) == 0.0
    # n - c < k: every draw of k samples holds a correct one
    assert pass_at_k(5, 3, 3) == 1.0
    assert pass_at_k(10, 8, 5) == 1.0
    # n - c == k: exactly one draw (all the wrong ones) fails
    assert pass_at_k(6, 3, 3) == pytest.approx(1 - 1 / comb(6, 3), abs=1e-12)
    # large n does not overflow and agrees with exact rationals
    assert pass_at_k(1000, 7, 100) == pytest.approx(1 - comb(993, 100) / comb(1000, 100), rel=1e-9)


def test_k_larger_than_n_and_bad_counts_are_named() -> None:
    with pytest.raises(BadRequest) as err:
        pass_at_k(5, 1, 10)
    assert err.value.param == "k" and "k=10" in err.value.message and "n=5" in err.value.message
    with pytest.raises(BadRequest, match="c=6"):
        pass_at_k(5, 6, 1)
    with pytest.raises(BadRequest, match="k=20 is larger than n=10"):
        parse_ks("1,5,20", 10)
    with pytest.raises(BadRequest, match="comma-separated"):
        parse_ks("1,five", 10)
    assert parse_ks("10,1,5,5", 10) == [1, 5, 10]


def _o(stage: str, ok: bool = False) -> SampleOutcome:
    return outcome_from_verifier(stage, ok)


def test_stages_from_verifier_results() -> None:
    assert _o("none").reached == "none"
    assert _o("compile").reached == "extracted"                 # code found, did not compile
    assert _o("compiled").reached == "compiled"                 # compiled, did not run cleanly
    assert _o("tested").reached == "ran"                        # tests ran, some failed
    assert _o("correct", True).reached == "correct"
    assert outcome_from_verifier("tested", False, {"load_error": "ImportError"}).reached == "compiled"
    assert _o("correct", False).correct is False                 # success decides, not the stage alone


def test_summary_reports_stages_separately_from_pass_at_k() -> None:
    outcomes = {
        "a": [_o("correct", True), _o("tested"), _o("compile"), _o("none")],
        "b": [_o("tested"), _o("tested"), _o("compiled"), _o("compiled")],
    }
    rep = summarize_passk(outcomes, [1, 2, 4])
    assert rep.n == 4 and rep.samples == 8
    assert rep.pass_at[1] == pytest.approx((1 / 4 + 0) / 2)
    assert rep.pass_at[2] == pytest.approx((1 - comb(3, 2) / comb(4, 2)) / 2)
    assert rep.pass_at[4] == pytest.approx(0.5)
    # 7 of 8 samples compiled-or-further would be a "compile rate"; pass@1 stays 0.125
    assert rep.stage_rates == {"extracted": 7 / 8, "compiled": 6 / 8, "ran": 4 / 8, "correct": 1 / 8}
    with pytest.raises(BadRequest, match="same number of samples"):
        summarize_passk({"a": [_o("none")], "b": [_o("none"), _o("none")]}, [1])
    with pytest.raises(BadRequest, match="empty"):
        summarize_passk({}, [1])


async def test_pipelined_loop_keeps_samples_with_their_problem() -> None:
    problems = [Problem(f"p{i}", f"prompt {i}", "mbpp", ["assert True"]) for i in range(7)]
    asked: list[list[str]] = []

    async def generate(part: list[Problem]) -> list[list[str]]:
        asked.append([p.task_id for p in part])
        return [[f"{p.task_id}:{j}" for j in range(3)] for p in part]

    async def verify(pairs: list[tuple[Problem, str]]) -> list[SampleOutcome]:
        # correct exactly when the sample index is below the problem number mod 4
        out = []
        for p, c in pairs:
            assert c.startswith(p.task_id + ":")
            ok = int(c.split(":")[1]) < int(p.task_id[1:]) % 4
            out.append(_o("correct", True) if ok else _o("tested"))
        return out

    progress: list[int] = []
    rep, rows = await run_passk(problems, n=3, ks=[1, 3], generate=generate, verify=verify, chunk_size=3,
                                on_progress=lambda d, t: progress.append(d))
    assert asked == [["p0", "p1", "p2"], ["p3", "p4", "p5"], ["p6"]] and progress == [3, 6, 7]
    correct = {p.problem_id: p.correct for p in rep.problems}
    assert correct == {f"p{i}": min(i % 4, 3) for i in range(7)}
    assert rep.pass_at[1] == pytest.approx(sum(min(i % 4, 3) / 3 for i in range(7)) / 7)
    assert len(rows) == 21 and {r["task_id"] for r in rows} == {p.task_id for p in problems}
    with pytest.raises(BadRequest, match="k=4 is larger than n=3"):
        await run_passk(problems, n=3, ks=[4], generate=generate, verify=verify)
