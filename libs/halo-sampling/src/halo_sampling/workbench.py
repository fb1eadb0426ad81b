"""The reward workbench: look at the reward signal before spending GPU hours training on it.

``halo-forge verify dry-run`` samples a few completions per prompt, verifies them, and calls
:func:`analyze_rewards` on the result. Pure Python (no torch, no numpy), so the CLI can import it.

It warns about signals an RL recipe (GRPO, RAFT) cannot learn from, or learns the wrong thing from:

* ``all_zero`` — every reward is 0: no completion ever succeeds, there is nothing to reinforce;
* ``all_equal`` — every reward is the same non-zero value (e.g. all 1.0: already solved);
* ``flat_groups`` — most prompts give the same reward to all their samples; GRPO's group-relative
  advantage is exactly 0 there, so those prompts teach nothing;
* ``length_correlated`` — reward tracks completion length (|Pearson| or |Spearman| >= 0.5): the
  policy can learn to pad or truncate instead of solving the task;
* ``verifier_errors`` — the verifier could not check many completions (missing toolchain,
  missing context): those rewards mean "error", not "wrong";
* ``truncated`` — most completions hit max_new_tokens: rewards judge cut-off answers.

Usage::

    report = analyze_rewards([
        PromptRewards(prompt="2+2=", rewards=[1.0, 0.0, 1.0], lengths=[3, 9, 4]),
        ...
    ])
    for w in report.warnings:
        print(w.code, w.message)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel, Field

#: Defaults of the warning thresholds (overridable per call).
FLAT_GROUP_FRACTION = 0.5
LENGTH_CORRELATION = 0.5
MIN_SAMPLES_FOR_CORRELATION = 8
ERROR_FRACTION = 0.25
TRUNCATED_FRACTION = 0.5


class PromptRewards(BaseModel):
    """The sampled completions of one prompt and what the verifier said about them."""

    prompt: str = Field(description="The prompt (or a preview of it).")
    rewards: list[float] = Field(description="Reward of each completion.")
    lengths: list[int] = Field(description="Length of each completion in tokens.")
    finish_reasons: list[str] = Field(default_factory=list, description="stop | length per completion.")
    errors: list[str | None] = Field(default_factory=list, description="Verifier error_type per completion, None if none.")
    completions: list[str] = Field(default_factory=list, description="Completion texts (for display).")


class SignalWarning(BaseModel):
    """One degenerate-signal finding."""

    code: str = Field(description="all_zero | all_equal | flat_groups | length_correlated | verifier_errors | truncated.")
    message: str = Field(description="What is wrong and what to do about it.")
    value: float | None = Field(default=None, description="The measured quantity that triggered it.")


class HistogramBin(BaseModel):
    lo: float = Field(description="Lower edge (inclusive).")
    hi: float = Field(description="Upper edge (exclusive; the last bin includes it).")
    count: int = Field(description="Rewards in the bin.")


class PromptSummary(BaseModel):
    prompt: str = Field(description="Prompt preview.")
    mean: float = Field(description="Mean reward of its completions.")
    std: float = Field(description="Population standard deviation of its rewards (0: no GRPO signal).")
    rewards: list[float] = Field(description="Rewards of its completions.")


class RewardReport(BaseModel):
    """Reward distribution and warnings for a dry run."""

    num_prompts: int = Field(description="Prompts sampled.")
    num_samples: int = Field(description="Completions verified.")
    mean: float = Field(description="Mean reward.")
    std: float = Field(description="Population standard deviation of all rewards.")
    min: float = Field(description="Smallest reward.")
    max: float = Field(description="Largest reward.")
    zero_fraction: float = Field(description="Fraction of rewards equal to 0.")
    flat_group_fraction: float = Field(description="Fraction of prompts whose completions all got the same reward.")
    length_pearson: float | None = Field(description="Pearson correlation of reward with length (None: undefined).")
    length_spearman: float | None = Field(description="Spearman rank correlation of reward with length.")
    truncated_fraction: float = Field(description="Fraction of completions that hit max_new_tokens.")
    error_fraction: float = Field(description="Fraction of completions the verifier could not check.")
    histogram: list[HistogramBin] = Field(description="Reward histogram.")
    prompts: list[PromptSummary] = Field(description="Per-prompt summary.")
    warnings: list[SignalWarning] = Field(description="Degenerate-signal findings; empty when the signal looks usable.")


# ---- statistics ----------------------------------------------------------------------------------
def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def pstdev(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation; None when either side is constant or there are fewer than 2 points."""
    if len(xs) != len(ys) or len(xs) < 2:
        return None
    mx, my = mean(xs), mean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 1e-12 or syy <= 1e-12:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def ranks(xs: Sequence[float]) -> list[float]:
    """Average ranks (ties share the mean of their positions), 1-based."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    if len(xs) != len(ys) or len(xs) < 2:
        return None
    return pearson(ranks(xs), ranks(ys))


def histogram(values: Sequence[float], bins: int = 10) -> list[HistogramBin]:
    """Equal-width bins over [min(0, min), max(1, max)] (rewards are usually in [0, 1])."""
    if not values:
        return []
    lo, hi = min(0.0, min(values)), max(1.0, max(values))
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    return [HistogramBin(lo=lo + i * width, hi=lo + (i + 1) * width, count=c) for i, c in enumerate(counts)]


# ---- the analysis --------------------------------------------------------------------------------
def analyze_rewards(
    groups: Sequence[PromptRewards],
    *,
    flat_group_fraction: float = FLAT_GROUP_FRACTION,
    length_correlation: float = LENGTH_CORRELATION,
    error_fraction: float = ERROR_FRACTION,
    truncated_fraction: float = TRUNCATED_FRACTION,
) -> RewardReport:
    """Distribution, per-prompt spread, length correlation and warnings for a dry run's rewards."""
    for i, g in enumerate(groups):
        if len(g.rewards) != len(g.lengths):
            raise ValueError(f"prompt {i}: {len(g.rewards)} rewards but {len(g.lengths)} lengths")
    rewards = [r for g in groups for r in g.rewards]
    lengths = [float(n) for g in groups for n in g.lengths]
    finishes = [f for g in groups for f in g.finish_reasons]
    errors = [e for g in groups for e in g.errors]
    if not rewards:
        raise ValueError("no rewards to analyze")

    multi = [g for g in groups if len(g.rewards) >= 2]
    flat = [g for g in multi if max(g.rewards) - min(g.rewards) <= 1e-9]
    flat_frac = len(flat) / len(multi) if multi else 0.0
    r_p, r_s = pearson(lengths, rewards), spearman(lengths, rewards)
    trunc = sum(f == "length" for f in finishes) / len(finishes) if finishes else 0.0
    err = sum(e is not None for e in errors) / len(errors) if errors else 0.0
    lo, hi = min(rewards), max(rewards)

    warnings: list[SignalWarning] = []
    if hi == 0.0 and lo == 0.0:
        warnings.append(SignalWarning(code="all_zero", value=0.0, message=(
            f"all {len(rewards)} rewards are 0: the model never succeeds, so RL has nothing to reinforce. Use an easier "
            "task or a graduated verifier, raise max_new_tokens, or SFT first.")))
    elif hi - lo <= 1e-9:
        warnings.append(SignalWarning(code="all_equal", value=lo, message=(
            f"all {len(rewards)} rewards equal {lo:g}: there is no variance to learn from"
            + (" (the task is already solved)." if lo >= 1.0 else ".") + " Use harder prompts or a finer verifier.")))
    if multi and not (hi - lo <= 1e-9) and flat_frac >= flat_group_fraction:
        warnings.append(SignalWarning(code="flat_groups", value=flat_frac, message=(
            f"{flat_frac:.0%} of prompts gave every sample the same reward: GRPO's group-relative advantage is 0 for "
            "them, so they teach nothing. Sample more completions per prompt (n), raise the temperature, or drop "
            "prompts that are always solved or never solved.")))
    corr = max((abs(c) for c in (r_p, r_s) if c is not None), default=None)
    if corr is not None and len(rewards) >= MIN_SAMPLES_FOR_CORRELATION and corr >= length_correlation:
        sign = (r_s if r_s is not None and abs(r_s) == corr else r_p) or 0.0
        warnings.append(SignalWarning(code="length_correlated", value=sign, message=(
            f"reward correlates with completion length (r={sign:+.2f}): the policy can learn to make answers "
            f"{'longer' if sign > 0 else 'shorter'} instead of better. Check the verifier, or add a length penalty.")))
    if errors and err >= error_fraction:
        common = Counter(e for e in errors if e is not None).most_common(1)[0][0]
        warnings.append(SignalWarning(code="verifier_errors", value=err, message=(
            f"the verifier could not check {err:.0%} of completions (most often: {common}); those rewards are "
            "errors, not wrong answers. Fix the verifier setup or the prompts' context.")))
    if finishes and trunc >= truncated_fraction:
        warnings.append(SignalWarning(code="truncated", value=trunc, message=(
            f"{trunc:.0%} of completions hit max_new_tokens: rewards judge cut-off answers. Raise max_new_tokens "
            "or add a stop sequence.")))

    return RewardReport(
        num_prompts=len(groups),
        num_samples=len(rewards),
        mean=mean(rewards),
        std=pstdev(rewards),
        min=lo,
        max=hi,
        zero_fraction=sum(r == 0.0 for r in rewards) / len(rewards),
        flat_group_fraction=flat_frac,
        length_pearson=r_p,
        length_spearman=r_s,
        truncated_fraction=trunc,
        error_fraction=err,
        histogram=histogram(rewards),
        prompts=[PromptSummary(prompt=g.prompt, mean=mean(g.rewards), std=pstdev(g.rewards), rewards=list(g.rewards))
                 for g in groups],
        warnings=warnings,
    )
