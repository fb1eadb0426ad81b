"""Preference losses as pure tensor functions, each written from its paper's formula.

All take per-sequence log-probabilities (summed over completion tokens) of the policy and, except
ORPO, of the reference model, and return a per-pair loss vector plus the implicit rewards. With
``reference_free`` the reference log-probs are zeros (a uniform reference).

Notation: ``h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))``.

=============  ===========================================================================  ==========
loss_type      per-pair loss                                                                 source
=============  ===========================================================================  ==========
sigmoid        ``-log sigmoid(beta h)``                                                      DPO, eq. 7
cdpo           ``-(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``                   cDPO (label smoothing eps)
ipo            ``(h - 1/(2 beta))^2``  (beta is IPO's tau)                                   IPO, eq. 17
hinge          ``max(0, 1 - beta h)``                                                        SLiC-HF
kto_pair       ``(1 - sigmoid(beta (r_w - z_l)) + 1 - sigmoid(beta (z_w - r_l))) / 2`` with
               ``r = log pi - log ref`` and ``z`` the batch-mean of ``r`` clamped at 0,
               not back-propagated                                                           KTO, paired
rpo            ``sigmoid + alpha * NLL(y_w)``  with NLL the per-token mean                   RPO (Pang et al.)
orpo           ``NLL(y_w) - lambda log sigmoid(log odds(y_w) - log odds(y_l))`` on
               length-averaged log-probs, no reference                                       ORPO, eq. 6-7
=============  ===========================================================================  ==========
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "kto_pair", "rpo", "cdpo")


@dataclass
class PreferenceLossOutput:
    """Per-pair losses (mean them for the batch loss) and detached implicit rewards."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    rpo_alpha: float = 1.0,
    chosen_lengths: torch.Tensor | None = None,
) -> PreferenceLossOutput:
    """DPO-family loss. ``chosen_lengths`` (completion tokens) is needed for ``rpo``'s per-token NLL.

    ``label_smoothing`` > 0 turns ``sigmoid`` (and ``rpo``'s DPO part) into conservative DPO as well.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratios - rejected_logratios
    if loss_type in ("sigmoid", "cdpo", "rpo"):
        eps = label_smoothing
        losses = -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
        if loss_type == "rpo":
            if chosen_lengths is None:
                raise ValueError("rpo needs chosen_lengths for the per-token NLL term")
            nll = -policy_chosen_logps / chosen_lengths.clamp(min=1).to(policy_chosen_logps.dtype)
            losses = losses + rpo_alpha * nll
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * h)
    elif loss_type == "kto_pair":
        # KL reference points: batch means of the log-ratios, clamped at zero and held constant (the KTO paper
        # does not back-propagate through them).
        chosen_kl = chosen_logratios.mean().clamp(min=0).detach()
        rejected_kl = rejected_logratios.mean().clamp(min=0).detach()
        losses = (
            (1.0 - torch.sigmoid(beta * (chosen_logratios - rejected_kl)))
            + (1.0 - torch.sigmoid(beta * (chosen_kl - rejected_logratios)))
        ) / 2.0
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected one of {', '.join(DPO_LOSS_TYPES)}")
    return PreferenceLossOutput(losses, (beta * chosen_logratios).detach(), (beta * rejected_logratios).detach())


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012)."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@dataclass
class ORPOLossOutput(PreferenceLossOutput):
    nll: torch.Tensor
    log_odds_ratio: torch.Tensor
    log_odds: torch.Tensor


def orpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    beta: float = 0.1,
) -> ORPOLossOutput:
    """ORPO: SFT on the chosen completion plus ``beta`` x the odds-ratio term, per pair.

    Log-probabilities are length-averaged (the paper's ``log P(y|x) / |y|``); the odds of y are
    ``P / (1 - P)``, so ``log odds = log P - log(1 - P)``. Rewards are ``beta`` x the averaged log-probs.
    """
    avg_c = policy_chosen_logps / chosen_lengths.clamp(min=1).to(policy_chosen_logps.dtype)
    avg_r = policy_rejected_logps / rejected_lengths.clamp(min=1).to(policy_rejected_logps.dtype)
    log_odds = (avg_c - avg_r) - (log1mexp(avg_c) - log1mexp(avg_r))
    ratio = F.logsigmoid(log_odds)
    nll = -avg_c
    losses = nll - beta * ratio
    return ORPOLossOutput(
        losses=losses,
        chosen_rewards=(beta * avg_c).detach(),
        rejected_rewards=(beta * avg_r).detach(),
        nll=nll.detach(),
        log_odds_ratio=ratio.detach(),
        log_odds=log_odds.detach(),
    )


def bradley_terry_loss(
    rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor, *, center_coefficient: float | None = None
) -> torch.Tensor:
    """Reward-model loss: ``-log sigmoid(r_w - r_l)`` averaged, plus ``c * mean((r_w + r_l)^2)`` centering."""
    loss = -F.logsigmoid(rewards_chosen - rewards_rejected).mean()
    if center_coefficient:
        loss = loss + center_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)
    return loss
