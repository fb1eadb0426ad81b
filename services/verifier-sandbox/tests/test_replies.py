"""Replies fit in one bus message: details are trimmed, rewards and stages never."""

from __future__ import annotations

import pytest
from halo_common.errors import BadRequest
from halo_schemas.verifiers import VerifyResult
from halo_verifier_sandbox.core.replies import fit, fit_batch


def big(reward: float, size: int) -> VerifyResult:
    return VerifyResult(verifier="gcc", reward=reward, success=reward == 1.0, stage="ran",
                        details={"stdout": "x" * size, "tests": [{"out": "y" * 100}] * 200, "passed": 3})


def test_one_result_is_trimmed_under_the_limit_keeping_its_reward() -> None:
    result = big(0.75, 200_000)
    trimmed = fit(result, 5_000)
    assert len(trimmed.model_dump_json()) <= 5_000
    assert (trimmed.reward, trimmed.stage, trimmed.details["passed"]) == (0.75, result.stage, 3)
    assert trimmed.details["truncated"] is True
    assert fit(big(1.0, 10), 1_000_000) == big(1.0, 10), "a small result is left alone"


def test_a_batch_trims_its_largest_results_and_refuses_what_cannot_fit() -> None:
    results = [big(0.5, 300_000), big(1.0, 10)]
    fitted = fit_batch(results, 60_000)
    assert sum(len(r.model_dump_json()) for r in fitted) <= 60_000
    assert [r.reward for r in fitted] == [0.5, 1.0]
    with pytest.raises(BadRequest, match="does not fit in one bus reply"):
        fit_batch([big(0.1, 10)] * 400, 20_000)
