"""The mid-training probe's backend-neutral part (spec field ``probe``), shared by trainer-torch and trainer-mlx:
:class:`Prober` (baseline, verdicts, last passing model, where a ``stop`` came) and :func:`bus_submitter`
(a probe as a job on the eval service, over the bus the job's reporter publishes on). No torch, no MLX::

    prober = Prober(spec.probe, base_model=spec.model, run=run, reporter=reporter,
                    submit=bus_submitter(reporter, spec.probe.timeout_s))
    prober.start()                       # probe the base once (or read the baseline of an earlier attempt)
    if not prober.check(checkpoint_dir, step) and prober.stopped_at is not None:
        ...                              # on_regression=stop: end training, export prober.last_good (or the base)

Each trainer writes the probed weights where the eval service loads them (a PEFT adapter or an HF model
directory) and restores the last passing weights itself: trainer-torch's ``components/probe.py``
(``ProbeCallback``), trainer-mlx's ``core/probe.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from halo_schemas.eval import ProbeJobSpec, TrainingProbeSpec

log = logging.getLogger("halo_training")

#: submit(spec) -> the probe job's finished summary (raises when the job failed).
Submit = Callable[[ProbeJobSpec], dict[str, Any]]


def bus_submitter(reporter: Any, timeout_s: float) -> Submit | None:
    """A submit function over the bus the reporter publishes on (None for a reporter without one, e.g. the
    file reporter of a multi-process rank)."""
    job = getattr(reporter, "job", None)
    bus, events = getattr(job, "bus", None), getattr(job, "events", None)
    loop = getattr(events, "loop", None)
    if bus is None or loop is None:
        return None

    async def go(spec: ProbeJobSpec) -> dict[str, Any]:
        from halo_clients.eval import EvalClient

        ev = EvalClient(bus)
        finished = await ev.wait(await ev.submit_probe(spec, check=False), timeout=timeout_s)
        if finished.state != "succeeded":
            raise RuntimeError(f"probe job failed: {finished.error}")
        return dict(finished.summary)

    return lambda spec: asyncio.run_coroutine_threadsafe(go(spec), loop).result(timeout_s + 60)


class Prober:
    """Probe bookkeeping shared by step-based training (:class:`ProbeCallback`) and RAFT's cycles: the
    baseline (probed once, kept in ``probe/baseline.json`` so a resumed run compares against the same
    numbers), each probe's verdict (``probe/probes.jsonl``, progress metrics ``probe/<task>`` and
    ``probe_regressed``), the last passing model (``probe/last_good.json``) and where a ``stop`` came."""

    def __init__(self, spec: TrainingProbeSpec, *, base_model: str, run: Any, submit: Submit, reporter: Any) -> None:
        self.spec, self.base_model, self.run = spec, base_model, run
        self.submit, self.reporter = submit, reporter
        self.dir = Path(run.root) / "probe"
        self.baseline: dict[str, float] | None = None
        self.last_good: Path | None = None
        self.last_good_step: int | None = None
        self.stopped_at: int | None = None
        self.history: list[dict[str, Any]] = []

    def _probe(self, model: str, step: int, baseline: dict[str, float] | None) -> dict[str, Any]:
        return self.submit(ProbeJobSpec(model=model, tasks=self.spec.tasks, limit=self.spec.limit,
                                        baseline_scores=baseline or {}, tolerance=self.spec.tolerance, step=step))

    def start(self) -> None:
        """Probe the base model once (or read the baseline of an earlier attempt) and the last good model."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "baseline.json"
        if path.is_file():
            self.baseline = json.loads(path.read_text())["scores"]
        else:
            result = self._probe(self.base_model, 0, None)
            self.baseline = {t: float(v["value"]) for t, v in result["tasks"].items()}
            path.write_text(json.dumps({"model": self.base_model, "scores": self.baseline}, indent=2))
        good = self.dir / "last_good.json"
        if good.is_file():
            saved = json.loads(good.read_text())
            p = Path(saved["path"])
            self.last_good, self.last_good_step = (p, saved.get("step")) if p.exists() else (None, None)
        for line in (self.dir / "probes.jsonl").read_text().splitlines() if (self.dir / "probes.jsonl").is_file() else []:
            self.history.append(json.loads(line))

    def check(self, model: Path, step: int, total_steps: int | None = None, **label: Any) -> bool:
        """Probe ``model`` (a checkpoint or a cycle's policy) at ``step``; True when it passed. A regression
        with ``on_regression=stop`` sets :attr:`stopped_at`; the caller ends training."""
        result = self._probe(str(model), step, self.baseline)
        report = result.get("probe") or {}
        regressed = not report.get("ok", True)
        entry = {"step": step, **label, "checkpoint": str(model), "ok": not regressed, "tasks": result.get("tasks"),
                 "regressed": report.get("regressed", []), "missing": report.get("missing", [])}
        self.history.append(entry)
        with (self.dir / "probes.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        metrics = {f"probe/{t}": float(v["value"]) for t, v in (result.get("tasks") or {}).items()}
        metrics["probe_regressed"] = 1.0 if regressed else 0.0
        self.reporter.progress(step, total_steps, metrics)
        if not regressed:
            self.last_good, self.last_good_step = model, step
            (self.dir / "last_good.json").write_text(json.dumps({"path": str(model), "step": step}))
            return True
        tasks = ", ".join(r["task"] for r in entry["regressed"]) or ", ".join(entry["missing"])
        log.warning("probe at step %d: regression on %s (on_regression=%s)", step, tasks, self.spec.on_regression)
        if self.spec.on_regression == "stop":
            self.stopped_at = step
        return False

    def summary(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "probes": self.history, "stopped_at_step": self.stopped_at,
                "last_good_checkpoint": str(self.last_good) if self.last_good else None,
                "last_good_step": self.last_good_step,
                "on_regression": self.spec.on_regression, "tolerance": self.spec.tolerance}
