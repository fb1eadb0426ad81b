"""Each preference loss against its formula, evaluated by hand (plain floats) on fixed log-probs."""

from __future__ import annotations

import math

import pytest
import torch
from halo_trainer_torch.core.components.losses import bradley_terry_loss, dpo_loss, log1mexp, orpo_loss

# Two pairs of (policy chosen, policy rejected, ref chosen, ref rejected) sequence log-probs.
PC, PR, RC, RR = [-4.0, -7.5], [-6.0, -5.0], [-5.0, -6.0], [-5.5, -5.5]
BETA = 0.5


def t(x: list[float]) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def h(i: int) -> float:
    return (PC[i] - RC[i]) - (PR[i] - RR[i])


def run(loss_type: str, **kw: float) -> list[float]:
    out = dpo_loss(t(PC), t(PR), t(RC), t(RR), loss_type=loss_type, beta=BETA, **kw)
    return out.losses.tolist()


def test_hand_values_of_h() -> None:
    # pair 0: (-4+5) - (-6+5.5) = 1.5 ; pair 1: (-7.5+6) - (-5+5.5) = -2.0
    assert [h(0), h(1)] == [1.5, -2.0]


def test_sigmoid_is_dpo() -> None:
    assert run("sigmoid") == pytest.approx([-logsig(BETA * h(i)) for i in range(2)], rel=1e-12)
    assert run("sigmoid")[0] == pytest.approx(0.38687100611489994, rel=1e-12)  # -log sigmoid(0.75)


def test_cdpo_label_smoothing() -> None:
    eps = 0.2
    want = [-(1 - eps) * logsig(BETA * h(i)) - eps * logsig(-BETA * h(i)) for i in range(2)]
    assert run("cdpo", label_smoothing=eps) == pytest.approx(want, rel=1e-12)
    # eps = 0 is plain DPO; eps > 0 penalises over-confidence on a correctly ordered pair
    assert run("cdpo", label_smoothing=0.0) == pytest.approx(run("sigmoid"), rel=1e-12)
    assert run("cdpo", label_smoothing=eps)[0] > run("sigmoid")[0]


def test_ipo() -> None:
    assert run("ipo") == pytest.approx([(h(i) - 1 / (2 * BETA)) ** 2 for i in range(2)], rel=1e-12)
    assert run("ipo") == pytest.approx([0.25, 9.0], rel=1e-12)


def test_hinge() -> None:
    assert run("hinge") == pytest.approx([max(0.0, 1 - BETA * h(i)) for i in range(2)], rel=1e-12)
    assert run("hinge") == pytest.approx([0.25, 2.0], rel=1e-12)


def test_kto_pair() -> None:
    rc = [PC[i] - RC[i] for i in range(2)]  # chosen log-ratios: 1.0, -1.5
    rr = [PR[i] - RR[i] for i in range(2)]  # rejected log-ratios: -0.5, 0.5
    z_c = max(0.0, sum(rc) / 2)  # 0.0 (mean -0.25 clamped)
    z_r = max(0.0, sum(rr) / 2)  # 0.0
    want = [((1 - sig(BETA * (rc[i] - z_r))) + (1 - sig(BETA * (z_c - rr[i])))) / 2 for i in range(2)]
    assert run("kto_pair") == pytest.approx(want, rel=1e-12)


def test_kto_pair_reference_points_are_not_differentiated() -> None:
    pc = t(PC).requires_grad_(True)
    out = dpo_loss(pc, t(PR), t(RC) - 3.0, t(RR), loss_type="kto_pair", beta=BETA)  # chosen KL mean > 0
    out.losses.sum().backward()
    # d/dpc_i only through the pair's own chosen log-ratio: beta * s * (1 - s) / 2 with s = sigmoid(beta (r_i - z_r))
    rr = [PR[i] - RR[i] for i in range(2)]
    z_r = max(0.0, sum(rr) / 2)
    for i in range(2):
        s = sig(BETA * ((PC[i] - RC[i] + 3.0) - z_r))
        assert pc.grad[i].item() == pytest.approx(-BETA * s * (1 - s) / 2, rel=1e-9)


def test_rpo_adds_length_normalised_nll() -> None:
    lengths = torch.tensor([4, 5])
    alpha = 0.7
    out = dpo_loss(t(PC), t(PR), t(RC), t(RR), loss_type="rpo", beta=BETA, rpo_alpha=alpha, chosen_lengths=lengths)
    want = [-logsig(BETA * h(i)) + alpha * (-PC[i] / int(lengths[i])) for i in range(2)]
    assert out.losses.tolist() == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(t(PC), t(PR), t(RC), t(RR), loss_type="rpo")


def test_rewards_and_reference_free() -> None:
    out = dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=BETA)
    assert out.chosen_rewards.tolist() == pytest.approx([BETA * (PC[i] - RC[i]) for i in range(2)])
    assert out.rejected_rewards.tolist() == pytest.approx([BETA * (PR[i] - RR[i]) for i in range(2)])
    zeros = torch.zeros(2, dtype=torch.float64)
    free = dpo_loss(t(PC), t(PR), zeros, zeros, beta=BETA)  # reference-free = uniform reference
    assert free.losses.tolist() == pytest.approx([-logsig(BETA * (PC[i] - PR[i])) for i in range(2)], rel=1e-12)


def test_unknown_loss_type() -> None:
    with pytest.raises(ValueError, match="unknown DPO loss_type"):
        run("kto")


def test_orpo() -> None:
    lc, lr = torch.tensor([4, 5]), torch.tensor([2, 5])
    out = orpo_loss(t(PC), t(PR), lc, lr, beta=BETA)
    for i in range(2):
        ac, ar = PC[i] / int(lc[i]), PR[i] / int(lr[i])
        log_odds = (ac - math.log(1 - math.exp(ac))) - (ar - math.log(1 - math.exp(ar)))
        want = -ac - BETA * logsig(log_odds)
        assert out.losses[i].item() == pytest.approx(want, rel=1e-12)
        assert out.log_odds[i].item() == pytest.approx(log_odds, rel=1e-12)
        assert out.chosen_rewards[i].item() == pytest.approx(BETA * ac, rel=1e-12)


def test_log1mexp_is_stable() -> None:
    x = t([-1e-6, -0.1, -0.7, -5.0, -50.0])
    want = [math.log(-math.expm1(v)) for v in x.tolist()]
    assert log1mexp(x).tolist() == pytest.approx(want, rel=1e-9)


def test_bradley_terry_with_centering() -> None:
    rc, rr = t([2.0, 0.5]), t([1.0, 1.5])
    plain = sum(-logsig(a - b) for a, b in zip([2.0, 0.5], [1.0, 1.5], strict=True)) / 2
    assert bradley_terry_loss(rc, rr).item() == pytest.approx(plain, rel=1e-12)
    centered = plain + 0.01 * ((3.0**2 + 2.0**2) / 2)
    assert bradley_terry_loss(rc, rr, center_coefficient=0.01).item() == pytest.approx(centered, rel=1e-12)
