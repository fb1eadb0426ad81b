"""A stand-in for the eval service's probe jobs, for trainer tests of what a run does with a verdict.

    judge = ScriptedJudge(regress_from=4)          # pass below step 4, regress from it
    monkeypatch.setattr(probe_module, "bus_submitter", lambda reporter, timeout_s: judge)
    ...                                            # train with spec.probe set
    assert [job.step for job in judge.jobs] == [0, 2, 4]

The real eval service judging real probe jobs is tested in tests/integration/test_eval_probe.py.
"""

from __future__ import annotations

from typing import Any

from halo_schemas.eval import ProbeJobSpec


class ScriptedJudge:
    """Answers probe jobs as the eval service does (a summary with ``tasks`` and a ``probe`` verdict): the base
    model scores 0.8 on ``task``; a probed checkpoint passes below ``regress_from`` steps, then scores 0.1."""

    def __init__(self, regress_from: int, task: str = "halo_arith_mc") -> None:
        self.regress_from, self.task = regress_from, task
        self.jobs: list[ProbeJobSpec] = []

    def __call__(self, spec: ProbeJobSpec) -> dict[str, Any]:
        self.jobs.append(spec)
        value = 0.1 if spec.step >= self.regress_from else 0.8
        regressed = [{"task": self.task, "baseline": 0.8, "value": value}] if spec.baseline_scores and value < 0.5 else []
        return {"tasks": {self.task: {"value": value}},
                "probe": {"ok": not regressed, "regressed": regressed, "missing": []}}
