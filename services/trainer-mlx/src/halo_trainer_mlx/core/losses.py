"""Preference losses on MLX arrays, by the same formulas as trainer-torch's (see its ``losses.py`` table).

All take per-sequence log-probabilities (summed over completion tokens) of the policy and, except ORPO, of the
reference; ``h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))``:

* sigmoid / cdpo: ``-(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``  (DPO; cDPO with eps > 0)
* rpo: the above ``+ alpha * NLL(y_w)`` (per-token mean)
* ipo: ``(h - 1/(2 beta))^2``;  hinge: ``max(0, 1 - beta h)``
* kto_pair: ``(1 - sigmoid(beta (r_w - z_l)) + 1 - sigmoid(beta (z_w - r_l))) / 2``, ``z`` = batch-mean log-ratio
  clamped at 0 and not differentiated
* ORPO: ``NLL(y_w) - lambda log sigmoid(log odds(y_w) - log odds(y_l))`` on length-averaged log-probs
* Bradley-Terry: ``mean(-log sigmoid(r_w - r_l)) + c * mean((r_w + r_l)^2)``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "kto_pair", "rpo", "cdpo")


def logsigmoid(x: mx.array) -> mx.array:
    return -nn.softplus(-x)


@dataclass
class PreferenceLossOutput:
    """Per-pair losses (mean them for the batch loss) and implicit rewards (not differentiated)."""

    losses: mx.array
    chosen_rewards: mx.array
    rejected_rewards: mx.array


def dpo_loss(policy_chosen_logps: mx.array, policy_rejected_logps: mx.array, ref_chosen_logps: mx.array,
             ref_rejected_logps: mx.array, *, loss_type: str = "sigmoid", beta: float = 0.1,
             label_smoothing: float = 0.0, rpo_alpha: float = 1.0,
             chosen_lengths: mx.array | None = None) -> PreferenceLossOutput:
    """DPO-family loss. ``chosen_lengths`` (completion tokens) is needed for ``rpo``'s per-token NLL."""
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    h = chosen - rejected
    if loss_type in ("sigmoid", "cdpo", "rpo"):
        losses = -(1.0 - label_smoothing) * logsigmoid(beta * h) - label_smoothing * logsigmoid(-beta * h)
        if loss_type == "rpo":
            if chosen_lengths is None:
                raise ValueError("rpo needs chosen_lengths for the per-token NLL term")
            losses = losses + rpo_alpha * (-policy_chosen_logps / mx.maximum(chosen_lengths, 1))
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    elif loss_type == "hinge":
        losses = mx.maximum(1.0 - beta * h, 0.0)
    elif loss_type == "kto_pair":
        z_chosen = mx.stop_gradient(mx.maximum(chosen.mean(), 0.0))
        z_rejected = mx.stop_gradient(mx.maximum(rejected.mean(), 0.0))
        losses = ((1.0 - mx.sigmoid(beta * (chosen - z_rejected))) + (1.0 - mx.sigmoid(beta * (z_chosen - rejected)))) / 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected one of {', '.join(DPO_LOSS_TYPES)}")
    return PreferenceLossOutput(losses, mx.stop_gradient(beta * chosen), mx.stop_gradient(beta * rejected))


def log1mexp(x: mx.array) -> mx.array:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012)."""
    x = mx.minimum(x, -1e-7)
    return mx.where(x > -0.6931471805599453, mx.log(-mx.expm1(x)), mx.log1p(-mx.exp(x)))


@dataclass
class ORPOLossOutput(PreferenceLossOutput):
    nll: mx.array
    log_odds_ratio: mx.array
    log_odds: mx.array


def orpo_loss(policy_chosen_logps: mx.array, policy_rejected_logps: mx.array, chosen_lengths: mx.array,
              rejected_lengths: mx.array, *, beta: float = 0.1) -> ORPOLossOutput:
    """ORPO per pair, on length-averaged log-probs; rewards are ``beta`` x the averaged log-probs."""
    avg_c = policy_chosen_logps / mx.maximum(chosen_lengths, 1)
    avg_r = policy_rejected_logps / mx.maximum(rejected_lengths, 1)
    log_odds = (avg_c - avg_r) - (log1mexp(avg_c) - log1mexp(avg_r))
    ratio = logsigmoid(log_odds)
    nll = -avg_c
    sg = mx.stop_gradient
    return ORPOLossOutput(losses=nll - beta * ratio, chosen_rewards=sg(beta * avg_c), rejected_rewards=sg(beta * avg_r),
                          nll=sg(nll), log_odds_ratio=sg(ratio), log_odds=sg(log_odds))


def bradley_terry_loss(rewards_chosen: mx.array, rewards_rejected: mx.array, *,
                       center_coefficient: float | None = None) -> mx.array:
    """Reward-model loss: ``-log sigmoid(r_w - r_l)`` averaged, plus ``c * mean((r_w + r_l)^2)`` centering."""
    loss = -logsigmoid(rewards_chosen - rewards_rejected).mean()
    if center_coefficient:
        loss = loss + center_coefficient * mx.mean((rewards_chosen + rewards_rejected) ** 2)
    return loss


def preference_stats(out: PreferenceLossOutput) -> dict[str, Any]:
    """Summed per-pair statistics (the loop divides by the number of pairs): the metric names trainer-torch reports."""
    margin = out.chosen_rewards - out.rejected_rewards
    return {"reward_chosen": out.chosen_rewards.sum(), "reward_rejected": out.rejected_rewards.sum(),
            "reward_margin": margin.sum(), "reward_accuracy": (margin > 0).astype(mx.float32).sum()}
