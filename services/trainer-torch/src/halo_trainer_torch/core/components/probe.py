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

:class:`Prober` and :func:`bus_submitter` are shared with trainer-mlx (:mod:`halo_training.probe`); they are
re-exported here, where the session and the RAFT recipe look them up when a run starts (tests replace
``bus_submitter`` on this module).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from halo_schemas.eval import TrainingProbeSpec
from halo_training.probe import Prober, Submit, bus_submitter  # noqa: F401
from transformers import TrainerCallback

log = logging.getLogger("halo_trainer_torch")


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
