"""The objective: which run-event metrics a method reports, and a trial's value from its events.

::

    check_objective("dpo", spec, ObjectiveSpec(metric="reward_accuracy", direction="maximize"))
    tracker = ObjectiveTracker(objective)
    value = tracker.add(step, event.metrics)      # the metric at this step (None when absent)
    tracker.value()                                # final or best, per objective.mode
"""

from __future__ import annotations

import math
import re

from halo_common.errors import BadRequest
from halo_schemas.sweeps import ObjectiveSpec
from halo_schemas.training import TrainSpecBase

#: Run-event metrics every training method reports (docs/metrics.md).
COMMON = ("loss", "learning_rate", "grad_norm", "tokens", "tokens_per_second")
#: What each method adds. ``eval_*`` needs evaluation data; ``<label>`` metrics follow the verifiers.
BY_METHOD: dict[str, tuple[str, ...]] = {
    "sft": ("entropy", "mean_token_accuracy"),
    "dpo": ("reward_chosen", "reward_rejected", "reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected"),
    "orpo": ("reward_chosen", "reward_rejected", "reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected",
             "nll", "log_odds_ratio", "log_odds"),
    "rm": ("accuracy", "margin", "min_reward", "mean_reward", "max_reward"),
    "grpo": ("reward_mean", "reward_std", "pass_rate", "verifier_error_ratio", "kl", "entropy", "completion_length",
             "clip_ratio", "zero_std_ratio"),
    "raft": ("reward_mean", "reward_std", "pass_rate", "verifier_error_ratio", "raft_kept", "raft_eligible"),
}
#: Per-verifier rewards of the RL methods.
LABELLED = re.compile(r"^reward_[a-z0-9_-]+_(mean|std)$")


def has_eval_data(spec: TrainSpecBase) -> bool:
    data = getattr(spec, "data", None)
    return data is not None and (getattr(data, "eval", None) is not None or getattr(data, "eval_fraction", 0) > 0)


def reported_metrics(method: str, spec: TrainSpecBase) -> list[str]:
    """The metric names ``method`` reports for ``spec`` (``eval_*`` only with evaluation data)."""
    names = [*COMMON, *BY_METHOD.get(method, ())]
    if has_eval_data(spec):
        names += ["eval_loss"] + [f"eval_{n}" for n in BY_METHOD.get(method, ())]
    return names


def check_objective(method: str, spec: TrainSpecBase, objective: ObjectiveSpec) -> None:
    """BadRequest (``objective.metric``) when ``method`` never reports the metric for this spec."""
    metric = objective.metric
    known = reported_metrics(method, spec)
    if metric in known or (method in ("grpo", "raft") and LABELLED.match(metric)):
        return
    if metric.startswith("eval_") and not has_eval_data(spec):
        raise BadRequest(f"objective.metric: {metric!r} needs evaluation data (base.data.eval or "
                         "base.data.eval_fraction > 0)", param="objective.metric")
    raise BadRequest(f"objective.metric: {method} never reports {metric!r}; it reports {', '.join(known)}",
                     param="objective.metric")


class ObjectiveTracker:
    """The objective's values over one trial's run events (in any order, duplicates ignored)."""

    def __init__(self, objective: ObjectiveSpec) -> None:
        self.objective = objective
        self.values: dict[int, float] = {}

    def add(self, step: int, metrics: dict[str, float]) -> float | None:
        """Record the metric at ``step`` when the event carries it; returns it (None when absent)."""
        value = metrics.get(self.objective.metric)
        if value is None or not math.isfinite(value):
            return None
        self.values[step] = float(value)
        return float(value)

    @property
    def last_step(self) -> int | None:
        return max(self.values) if self.values else None

    def value(self) -> float | None:
        """The trial's objective: the last value, or the best one (``mode=best``); None if never reported."""
        if not self.values:
            return None
        if self.objective.mode == "final":
            return self.values[max(self.values)]
        pick = min if self.objective.direction == "minimize" else max
        return pick(self.values.values())
