"""The objective: which run-event metrics a method reports, and a trial's value from its events.

::

    check_objective("dpo", spec, ObjectiveSpec(metric="reward_accuracy", direction="maximize"))
    tracker = ObjectiveTracker(objective)
    value = tracker.add(step, event.metrics)      # the metric at this step (None when absent)
    tracker.value()                                # final or best, per objective.mode

    target = eval_target(objective)                # EvalTarget("halo_arith_mc", "acc") for eval:halo_arith_mc:acc
    sweep = await resolve_eval_objective(EvalClient(bus), sweep)   # unknown task refused with close matches
    value = eval_value(finished.summary, target)   # from the eval job's finished event
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from halo_common.errors import BadRequest, HaloError, Unavailable
from halo_schemas.sweeps import EVAL_PREFIX, ObjectiveSpec, SweepSpec
from halo_schemas.training import TrainSpecBase

if TYPE_CHECKING:
    from halo_clients.eval import EvalClient

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
    """BadRequest (``objective.metric``) when ``method`` never reports the metric for this spec (an eval objective:
    when the method's output cannot be evaluated; its task is resolved by :func:`resolve_eval_objective`)."""
    metric = objective.metric
    if eval_target(objective) is not None:
        if method not in EVALUABLE:
            raise BadRequest(f"objective.metric: an eval objective needs a language model to evaluate; {method} "
                             f"trains a {'reward model' if method == 'rm' else method + ' model'} (methods: "
                             f"{', '.join(EVALUABLE)})", param="objective.metric")
        if spec.backend == "mlx":
            raise BadRequest("objective.metric: an eval objective evaluates the trial's PEFT adapter; trainer-mlx "
                             "writes MLX adapters (use base.backend: torch)", param="objective.metric")
        return
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


# ---- eval objectives -----------------------------------------------------------------------------------
#: Methods whose trained model (a causal LM adapter) an lm-eval job can evaluate.
EVALUABLE = ("sft", "dpo", "orpo", "grpo", "raft")


@dataclass(frozen=True)
class EvalTarget:
    """``eval:<task>[:<metric>]``: the lm-eval task and its metric (None: the task's primary metric)."""

    task: str
    metric: str | None = None

    @property
    def objective(self) -> str:
        return f"{EVAL_PREFIX}{self.task}" + (f":{self.metric}" if self.metric else "")


def eval_target(objective: ObjectiveSpec) -> EvalTarget | None:
    """The eval task and metric of an ``eval:`` objective; None for a run-event metric."""
    if not objective.metric.startswith(EVAL_PREFIX):
        return None
    parts = objective.metric.split(":", 2)
    return EvalTarget(parts[1].strip(), parts[2].strip() if len(parts) == 3 else None)


async def resolve_eval_objective(client: EvalClient, sweep: SweepSpec) -> SweepSpec:
    """Resolve an eval objective's task on the eval service before any trial starts (``eval.check``: an unknown
    task is refused with its close matches; a curated group of several tasks asks for one of them). Returns the
    sweep with the task's lm-eval name (``eval:instruction_following`` -> ``eval:ifeval``); a sweep without an
    eval objective unchanged."""
    target = eval_target(sweep.objective)
    if target is None:
        return sweep
    where = "objective.metric"
    try:
        checked = await client.check(tasks=[target.task])
    except BadRequest as exc:
        raise BadRequest(f"{where}: {exc.message}", param=where) from None
    except Unavailable as exc:
        raise Unavailable(f"{where}: an eval objective needs the eval service to resolve {target.task!r} "
                          f"({exc.message}); start it (halo-forge up) and create the sweep again", param=where) from None
    except HaloError as exc:
        raise type(exc)(f"{where}: {exc.message}", param=where) from None
    offline = []
    if len(checked.tasks) == 1:
        listed = await client.task_list()
        offline = listed.offline if checked.tasks[0] in listed.groups.get("offline", []) else []
    members = checked.tasks if len(checked.tasks) > 1 else offline
    if members:
        # A group's score is its tasks' results; the built-in suite's group has no aggregate of its own.
        raise BadRequest(f"{where}: {target.task!r} is a group of {len(members)} tasks; an objective scores one "
                         f"task: {', '.join(members)}", param=where)
    resolved = EvalTarget(checked.tasks[0], target.metric)
    if resolved == target:
        return sweep
    objective = sweep.objective.model_copy(update={"metric": resolved.objective})
    return sweep.model_copy(update={"objective": objective})


class ObjectiveMissing(ValueError):
    """The evaluation ran but has no value for the objective's task or metric (every trial would miss it)."""


def eval_value(summary: dict[str, Any], target: EvalTarget) -> float:
    """The objective's value from an ``lm-eval`` job's finished summary: per task its primary metric and value
    (``tasks``), the full summary (every metric) in the file at ``summary_path``. ObjectiveMissing naming what
    the evaluation has instead."""
    tasks: dict[str, Any] = summary.get("tasks") or {}
    compact = tasks.get(target.task)
    if compact is None:
        raise ObjectiveMissing(f"objective.metric: the evaluation has no result for task {target.task!r} (it has "
                               f"{', '.join(tasks) or 'none'})")
    if target.metric is None or target.metric == compact.get("metric"):
        value = compact.get("value")
    else:
        try:
            full = json.loads(Path(summary["summary_path"]).read_text(encoding="utf-8"))["tasks"][target.task]
        except (KeyError, OSError, ValueError) as exc:
            raise ObjectiveMissing(f"objective.metric: cannot read the evaluation's metrics of {target.task!r} "
                                   f"({type(exc).__name__}: {exc})") from None
        metrics: dict[str, Any] = full.get("metrics") or {}
        if target.metric not in metrics:
            raise ObjectiveMissing(f"objective.metric: task {target.task!r} reports {', '.join(metrics)}, not "
                                   f"{target.metric!r}")
        value = metrics[target.metric].get("value")
    if value is None or not math.isfinite(float(value)):
        raise ObjectiveMissing(f"objective.metric: {target.objective} has no finite value ({value!r})")
    return float(value)
