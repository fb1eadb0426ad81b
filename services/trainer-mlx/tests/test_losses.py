"""The MLX preference losses against the hand-computed values trainer-torch's losses are tested with (the same
log-probs, the same plain-float formulas), in float32 (MLX's CPU build): relative tolerance 1e-6."""

from __future__ import annotations

import math

import mlx.core as mx
import pytest
from halo_trainer_mlx.core.losses import bradley_terry_loss, dpo_loss, log1mexp, orpo_loss

# Two pairs of (policy chosen, policy rejected, ref chosen, ref rejected) sequence log-probs.
POLICY_W, POLICY_L, REF_W, REF_L = [-4.0, -7.5], [-6.0, -5.0], [-5.0, -6.0], [-5.5, -5.5]
B = 0.5
REL = 1e-6


def a(x: list[float]) -> mx.array:
    return mx.array(x, dtype=mx.float32)


def ls(x: float) -> float:
    return -math.log1p(math.exp(-x))


def sg(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def margin(i: int) -> float:
    return (POLICY_W[i] - REF_W[i]) - (POLICY_L[i] - REF_L[i])


def losses(kind: str, **kw: float) -> list[float]:
    return dpo_loss(a(POLICY_W), a(POLICY_L), a(REF_W), a(REF_L), loss_type=kind, beta=B, **kw).losses.tolist()


def test_margins_by_hand() -> None:
    assert [margin(0), margin(1)] == [1.5, -2.0]


@pytest.mark.parametrize(("kind", "kw", "formula"), [
    ("sigmoid", {}, lambda h: -ls(B * h)),
    ("cdpo", {"label_smoothing": 0.2}, lambda h: -0.8 * ls(B * h) - 0.2 * ls(-B * h)),
    ("ipo", {}, lambda h: (h - 1 / (2 * B)) ** 2),
    ("hinge", {}, lambda h: max(0.0, 1 - B * h)),
])
def test_dpo_variants(kind: str, kw: dict[str, float], formula: object) -> None:
    assert losses(kind, **kw) == pytest.approx([formula(margin(i)) for i in range(2)], rel=REL)  # type: ignore[operator]


def test_known_numbers() -> None:
    assert losses("sigmoid")[0] == pytest.approx(0.38687100611489994, rel=REL)
    assert losses("ipo") == pytest.approx([0.25, 9.0], rel=REL)
    assert losses("hinge") == pytest.approx([0.25, 2.0], rel=REL)
    assert losses("cdpo", label_smoothing=0.0) == pytest.approx(losses("sigmoid"), rel=REL)


def test_kto_pair_and_its_gradient() -> None:
    rw = [POLICY_W[i] - REF_W[i] for i in range(2)]
    rl = [POLICY_L[i] - REF_L[i] for i in range(2)]
    zw, zl = max(0.0, sum(rw) / 2), max(0.0, sum(rl) / 2)
    want = [((1 - sg(B * (rw[i] - zl))) + (1 - sg(B * (zw - rl[i])))) / 2 for i in range(2)]
    assert losses("kto_pair") == pytest.approx(want, rel=REL)
    # The reference points are constants: d/d(policy_w[i]) only through the pair's own log-ratio.
    shifted_ref = a(REF_W) - 3.0

    def total(pw: mx.array) -> mx.array:
        return dpo_loss(pw, a(POLICY_L), shifted_ref, a(REF_L), loss_type="kto_pair", beta=B).losses.sum()

    grad = mx.grad(total)(a(POLICY_W)).tolist()
    for i in range(2):
        s = sg(B * ((POLICY_W[i] - REF_W[i] + 3.0) - zl))
        assert grad[i] == pytest.approx(-B * s * (1 - s) / 2, rel=1e-5)


def test_rpo_and_rewards_and_reference_free() -> None:
    out = dpo_loss(a(POLICY_W), a(POLICY_L), a(REF_W), a(REF_L), loss_type="rpo", beta=B, rpo_alpha=0.7,
                   chosen_lengths=mx.array([4, 5]))
    assert out.losses.tolist() == pytest.approx([-ls(B * margin(i)) + 0.7 * (-POLICY_W[i] / (4, 5)[i])
                                                 for i in range(2)], rel=REL)
    assert out.chosen_rewards.tolist() == pytest.approx([B * (POLICY_W[i] - REF_W[i]) for i in range(2)], rel=REL)
    assert out.rejected_rewards.tolist() == pytest.approx([B * (POLICY_L[i] - REF_L[i]) for i in range(2)], rel=REL)
    zero = mx.zeros(2)
    free = dpo_loss(a(POLICY_W), a(POLICY_L), zero, zero, beta=B)
    assert free.losses.tolist() == pytest.approx([-ls(B * (POLICY_W[i] - POLICY_L[i])) for i in range(2)], rel=REL)
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(a(POLICY_W), a(POLICY_L), a(REF_W), a(REF_L), loss_type="rpo")
    with pytest.raises(ValueError, match="unknown DPO loss_type"):
        losses("kto")


def test_orpo_and_log1mexp() -> None:
    lw, ll = [4, 5], [2, 5]
    out = orpo_loss(a(POLICY_W), a(POLICY_L), mx.array(lw), mx.array(ll), beta=B)
    for i in range(2):
        aw, al = POLICY_W[i] / lw[i], POLICY_L[i] / ll[i]
        odds = (aw - math.log(1 - math.exp(aw))) - (al - math.log(1 - math.exp(al)))
        assert out.losses.tolist()[i] == pytest.approx(-aw - B * ls(odds), rel=REL)
        assert out.log_odds.tolist()[i] == pytest.approx(odds, rel=1e-5)
        assert out.chosen_rewards.tolist()[i] == pytest.approx(B * aw, rel=REL)
    xs = [-1e-6, -0.1, -0.7, -5.0, -50.0]
    assert log1mexp(a(xs)).tolist() == pytest.approx([math.log(-math.expm1(v)) for v in xs], rel=1e-5)


def test_bradley_terry() -> None:
    plain = (-ls(2.0 - 1.0) - ls(0.5 - 1.5)) / 2
    assert bradley_terry_loss(a([2.0, 0.5]), a([1.0, 1.5])).item() == pytest.approx(plain, rel=REL)
    centered = plain + 0.01 * ((3.0**2 + 2.0**2) / 2)
    assert bradley_terry_loss(a([2.0, 0.5]), a([1.0, 1.5]), center_coefficient=0.01).item() == pytest.approx(
        centered, rel=REL)
