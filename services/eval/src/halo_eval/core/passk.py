"""pass@k: the unbiased estimator and the stage each sample reached.

    pass_at_k(n=10, c=3, k=5)            # 1 - C(7, 5) / C(10, 5) = 0.9166…
    summarize_passk({"HumanEval/0": [SampleOutcome(...), ...], ...}, ks=[1, 5, 10])

The estimator is Chen et al. (2021), eq. 1: for a problem with ``n`` samples of which ``c`` are
correct, pass@k = 1 - C(n-c, k) / C(n, k), the probability that at least one of ``k`` samples drawn
without replacement is correct. It is exactly 1 when ``n - c < k`` (every draw of k contains a
correct one). Computed as a product so large ``n`` never overflows.

Stages are reported next to pass@k, never instead of it: a sample can be ``extracted`` (code was
found), ``compiled`` (it parses), ``ran`` (its tests executed) and ``correct`` (every test passed);
only ``correct`` counts for pass@k.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from halo_common.errors import BadRequest

#: Stages in order; a sample that reached one reached all before it.
STAGES = ("extracted", "compiled", "ran", "correct")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem (``n`` samples, ``c`` correct). ``k > n`` is a BadRequest naming k."""
    if n < 1:
        raise BadRequest(f"n must be >= 1 (samples per problem); got {n}", param="n")
    if not 0 <= c <= n:
        raise BadRequest(f"correct count c={c} must be between 0 and n={n}", param="c")
    if k < 1 or k > n:
        raise BadRequest(f"k={k} needs 1 <= k <= n={n} (pass@k draws k of the n samples)", param="k")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i)  ==  1 - C(n-c, k) / C(n, k)
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def parse_ks(ks: str | Iterable[int], n: int) -> list[int]:
    """``"1,5,10"`` or ``[1, 5, 10]`` -> sorted unique ks, each checked against ``n`` (k > n is refused)."""
    if isinstance(ks, str):
        try:
            values = [int(x) for x in ks.split(",") if x.strip()]
        except ValueError:
            raise BadRequest(f"k must be a comma-separated list of integers; got {ks!r}", param="k") from None
    else:
        values = [int(x) for x in ks]
    if not values:
        raise BadRequest("k is empty; give at least one k (e.g. 1,5,10)", param="k")
    for k in values:
        if k < 1:
            raise BadRequest(f"k={k} must be >= 1", param="k")
        if k > n:
            raise BadRequest(f"k={k} is larger than n={n} samples per problem: pass@{k} needs n >= {k}", param="k")
    return sorted(set(values))


@dataclass(frozen=True)
class SampleOutcome:
    """What verification said about one sample: the stages it reached (a prefix of :data:`STAGES`)."""

    extracted: bool
    compiled: bool
    ran: bool
    correct: bool
    stage: str = ""
    error: str | None = None

    @property
    def reached(self) -> str:
        """The furthest stage reached, or ``none``."""
        last = "none"
        for s in STAGES:
            if getattr(self, s):
                last = s
        return last


def outcome_from_verifier(stage: str, success: bool, details: Mapping[str, Any] | None = None,
                          error: str | None = None) -> SampleOutcome:
    """Map a verifier-sandbox result (``stage``: none/compile/compiled/ran/tested/correct…) to stages.

    ``ran`` means the program loaded and its tests executed (a module that fails to import did not run).
    """
    details = details or {}
    extracted = stage not in ("none", "unavailable", "error")
    compiled = stage in ("compiled", "ran", "tested", "correct")
    ran = stage in ("ran", "tested", "correct") and not details.get("load_error") and not details.get("harness")
    correct = bool(success) and stage == "correct"
    return SampleOutcome(extracted=extracted, compiled=compiled, ran=ran or correct, correct=correct, stage=stage,
                         error=error)


@dataclass
class ProblemResult:
    """One problem: its samples' outcomes and pass@k per k."""

    problem_id: str
    n: int
    correct: int
    pass_at: dict[int, float]
    stages: dict[str, int]


@dataclass
class PassKReport:
    """Per problem and overall: pass@k (mean over problems) and the stage counts over every sample."""

    ks: list[int]
    n: int
    problems: list[ProblemResult]
    pass_at: dict[int, float] = field(default_factory=dict)
    stage_rates: dict[str, float] = field(default_factory=dict)
    samples: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ks": self.ks, "n": self.n, "problems": len(self.problems), "samples": self.samples,
            "pass_at": {f"pass@{k}": v for k, v in self.pass_at.items()},
            "stage_rates": self.stage_rates,
            "per_problem": [{"problem_id": p.problem_id, "n": p.n, "correct": p.correct,
                             "pass_at": {f"pass@{k}": v for k, v in p.pass_at.items()}, "stages": p.stages}
                            for p in self.problems],
        }


def summarize_passk(outcomes: Mapping[str, Sequence[SampleOutcome]], ks: Sequence[int]) -> PassKReport:
    """pass@k per problem and overall (the mean over problems), plus how many samples reached each stage.

    Every problem must have the same number of samples ``n`` (pass@k over mixed n is not one number).
    """
    if not outcomes:
        raise BadRequest("no problems to score (the dataset is empty)", param="dataset")
    sizes = {len(v) for v in outcomes.values()}
    if len(sizes) != 1:
        raise BadRequest(f"every problem needs the same number of samples; got sizes {sorted(sizes)}", param="n")
    n = sizes.pop()
    ks = parse_ks(list(ks), n)
    problems = []
    totals = dict.fromkeys(STAGES, 0)
    for pid, samples in outcomes.items():
        c = sum(1 for s in samples if s.correct)
        stages = {s: sum(1 for o in samples if getattr(o, s)) for s in STAGES}
        for s, v in stages.items():
            totals[s] += v
        problems.append(ProblemResult(pid, n, c, {k: pass_at_k(n, c, k) for k in ks}, stages))
    samples_total = n * len(problems)
    return PassKReport(
        ks=ks, n=n, problems=problems, samples=samples_total,
        pass_at={k: math.fsum(p.pass_at[k] for p in problems) / len(problems) for k in ks},
        stage_rates={s: totals[s] / samples_total for s in STAGES},
    )
