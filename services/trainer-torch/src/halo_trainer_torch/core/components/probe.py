"""The mid-training probe (spec field ``probe``): evaluate checkpoints on the eval service during training.

    trainer.add_callback(ProbeCallback(spec.probe, base_model=spec.model, run=run, halo=callback,
                                       submit=bus_submitter(reporter, spec.probe.timeout_s),
                                       checkpoint_every=spec.checkpoint_every_steps))

At the start the base model is probed once (its scores are the baseline, kept in ``probe/baseline.json``
so a resumed run compares against the same numbers). Every ``every_n_steps`` the checkpoint just written
is probed as a job on the eval service (not in this process); with ``every_cycle`` every checkpoint is, and
RAFT probes each cycle's policy (its recipe uses :class:`Prober` directly). A probe whose primary metric dropped more
than ``tolerance`` on any task is a regression: ``warn`` reports it; ``stop`` ends training, and before the
export the weights of the last checkpoint that passed are loaded back, so the run's adapter / final model
is that checkpoint (with no passing checkpoint yet, the base weights: nothing of the regressed training is
kept for an adapter run). Every probe is reported as progress metrics ``probe/<task>`` and
``probe_regressed`` and appended to ``probe/probes.jsonl``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from halo_schemas.eval import ProbeJobSpec, TrainingProbeSpec
from transformers import TrainerCallback

log = logging.getLogger("halo_trainer_torch")

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


class ProbeCallback(TrainerCallback):
    """Probes the checkpoints of step-based training (see the module docstring): every ``every_n_steps``,
    or with ``every_cycle`` at every checkpoint. ``halo`` is the run's HaloCallback (stop reason,
    checkpoint pruning)."""

    def __init__(self, spec: TrainingProbeSpec, *, base_model: str, run: Any, halo: Any, submit: Submit,
                 reporter: Any, checkpoint_every: int) -> None:
        every = spec.every_n_steps or checkpoint_every  # every_cycle: a step-based run's cycle is a checkpoint
        if every % checkpoint_every:
            raise ValueError(f"probe.every_n_steps ({every}) must be a multiple of "
                             f"checkpoint_every_steps ({checkpoint_every}): probes run on checkpoints")
        self.every, self.halo, self.base_model = every, halo, base_model
        self.prober = Prober(spec, base_model=base_model, run=run, submit=submit, reporter=reporter)
        self.run = run
        # The last passing checkpoint must outlive pruning until the next probe passes.
        halo.keep_checkpoints = max(halo.keep_checkpoints, every // checkpoint_every + 1)
        self.trainer: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.prober.start()

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        step = int(state.global_step)
        if not state.is_world_process_zero or step % self.every:
            return
        ckpt = Path(self.run.checkpoints) / f"checkpoint-{step}"
        if not ckpt.is_dir():
            return
        passed = self.prober.check(ckpt, step, int(state.max_steps) if state.max_steps else None)
        if not passed and self.prober.stopped_at is not None:
            control.should_training_stop = True
            self.halo.stop_reason = "probe-regressed"

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        if self.prober.stopped_at is None:
            return
        last_good = self.prober.last_good
        if last_good is not None and self.trainer is not None:
            # The export that follows writes these weights: the run ends at its last good checkpoint.
            self.trainer._load_from_checkpoint(str(last_good))
        elif model is not None and hasattr(model, "peft_config"):
            _reset_adapters(model)
        elif self.trainer is not None:
            from halo_training.models import resolve_model_path

            base = Path(resolve_model_path(self.base_model))
            if base.is_dir():  # a full finetune with no passing checkpoint ends at the base weights
                self.trainer._load_from_checkpoint(str(base))
            else:
                log.warning("probe: no passing checkpoint and base %s is not a local directory; the exported "
                            "weights are the regressed ones", self.base_model)

    def summary(self) -> dict[str, Any]:
        return self.prober.summary()


def _reset_adapters(model: Any) -> None:
    """No checkpoint passed: zero the LoRA B matrices, so the adapter is the identity (the base model)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.zero_()
