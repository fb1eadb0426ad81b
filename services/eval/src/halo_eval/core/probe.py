"""Probe: compare a small evaluation against a baseline and name the tasks that regressed.

    base = scores_from_summary(json.load(open("baseline/lm_eval_summary.json")))
    report = compare(current=scores_from_summary(summary), baseline=base, tolerance=0.05)
    report.regressed      # [Regression(task="halo_arith_mc", metric="acc", baseline=0.41, current=0.22, delta=-0.19)]

A task regressed when its primary metric moved the wrong way by more than ``tolerance`` (absolute,
in the metric's own units). A task of the baseline missing from the current run is reported, never
silently passed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from halo_common.errors import BadRequest, NotFound


@dataclass(frozen=True)
class Score:
    metric: str
    value: float
    higher_is_better: bool = True


@dataclass(frozen=True)
class Regression:
    task: str
    metric: str
    baseline: float
    current: float
    delta: float


@dataclass
class ProbeReport:
    regressed: list[Regression]
    compared: dict[str, dict[str, float]]
    missing: list[str]
    tolerance: float

    @property
    def ok(self) -> bool:
        return not self.regressed and not self.missing

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "tolerance": self.tolerance, "regressed": [asdict(r) for r in self.regressed],
                "compared": self.compared, "missing": self.missing}


def scores_from_summary(summary: Mapping[str, Any]) -> dict[str, Score]:
    """Primary metric per task of an ``lm_eval_summary.json`` (groups skipped: their tasks are compared)."""
    tasks = summary.get("tasks")
    if not isinstance(tasks, Mapping):
        raise BadRequest("baseline is not an lm_eval_summary.json (no 'tasks' object)", param="baseline")
    out = {}
    for task, t in tasks.items():
        if t.get("is_group"):
            continue
        m = t["primary_metric"]
        out[task] = Score(m, float(t["value"]), bool((t.get("higher_is_better") or {}).get(m, True)))
    return out


def scores_from_evals(evals: Iterable[Mapping[str, Any]]) -> dict[str, Score]:
    """Primary metric per task from registry eval rows (``details.primary``; else the first metric by name)."""
    rows = sorted(evals, key=lambda e: (e["task"], not (e.get("details") or {}).get("primary"), e["metric"]))
    out: dict[str, Score] = {}
    for e in rows:
        out.setdefault(e["task"], Score(e["metric"], float(e["value"]), bool(e.get("higher_is_better", True))))
    return out


def load_baseline_file(path: str | Path) -> dict[str, Score]:
    """Scores from an ``lm_eval_summary.json`` or a run directory holding ``eval/lm_eval_summary.json``."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "eval" / "lm_eval_summary.json"
    if not p.is_file():
        raise NotFound(f"baseline {str(path)!r} does not exist (expected an lm_eval_summary.json)", param="baseline")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BadRequest(f"baseline {p}: not valid JSON ({exc})", param="baseline") from None
    return scores_from_summary(data)


def compare(current: Mapping[str, Score], baseline: Mapping[str, Score], tolerance: float) -> ProbeReport:
    """Which baseline tasks regressed by more than ``tolerance`` (see the module docstring)."""
    if tolerance < 0:
        raise BadRequest(f"tolerance must be >= 0; got {tolerance}", param="tolerance")
    if not baseline:
        raise BadRequest("the baseline has no task scores", param="baseline")
    regressed, compared, missing = [], {}, []
    for task, b in sorted(baseline.items()):
        c = current.get(task)
        if c is None:
            missing.append(task)
            continue
        delta = c.value - b.value
        compared[task] = {"baseline": b.value, "current": c.value, "delta": delta}
        worse = -delta if b.higher_is_better else delta
        if worse > tolerance + 1e-12:
            regressed.append(Regression(task, b.metric, b.value, c.value, delta))
    return ProbeReport(regressed, compared, missing, tolerance)
