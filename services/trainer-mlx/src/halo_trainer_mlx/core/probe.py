"""The mid-training probe on MLX (spec field ``probe``; the bookkeeping is :mod:`halo_training.probe`, shared with
trainer-torch)::

    probe = make_probe(ctx)          # None without ``probe``, or without a bus to reach the eval service
    probe.start()                    # the base model, once (or the baseline of an earlier attempt)
    save_checkpoint(..., extra=probe.writer(model) if probe.due(step) else None, protect=probe.last_good)
    probe.check(checkpoint_dir, step, planned)   # True: passed; a stop sets probe.stopped

A probed checkpoint (every ``every_n_steps``; with ``every_cycle`` every checkpoint) also holds its weights as
the eval service loads them: a PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors`` and the
base's tokenizer files) or, for full finetuning, an HF model directory — next to the resumable
``weights.safetensors``. With ``on_regression: stop`` the loop ends at the regression and :meth:`MLXProbe.restore`
loads the last passing checkpoint's weights back (as resume does), or — none passed — the base weights (adapters
reset to the identity; a full finetune reloads the base), so the export is that model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from halo_training import probe as probe_lib

from halo_trainer_mlx.core.checkpoint import load_weights
from halo_trainer_mlx.core.context import JobContext
from halo_trainer_mlx.core.export import save_eval_model

log = logging.getLogger("halo_trainer_mlx")


class MLXProbe:
    def __init__(self, ctx: JobContext, submit: probe_lib.Submit) -> None:
        spec = ctx.spec.probe
        assert spec is not None
        self.ctx = ctx
        self.every = spec.every_n_steps or ctx.spec.checkpoint_every_steps  # every_cycle: every checkpoint
        self.prober = probe_lib.Prober(spec, base_model=ctx.spec.model, run=ctx.run, submit=submit,
                                       reporter=ctx.reporter)

    @property
    def last_good(self) -> Path | None:
        return self.prober.last_good

    @property
    def stopped(self) -> bool:
        return self.prober.stopped_at is not None

    def start(self) -> None:
        self.prober.start()

    def due(self, step: int) -> bool:
        return step > 0 and step % self.every == 0

    def writer(self, model: Any) -> Callable[[Path], None]:
        """Writes ``model``'s weights into a staged checkpoint directory, as the eval service loads them."""
        return lambda staged: save_eval_model(self.ctx, model, staged)

    def check(self, checkpoint: Path, step: int, total_steps: int | None) -> bool:
        return self.prober.check(checkpoint, step, total_steps)

    def restore(self, model: Any) -> None:
        """After a stop: the last passing checkpoint's weights, or the base weights when none passed."""
        if self.prober.last_good is not None:
            load_weights(self.prober.last_good, model)
            return
        if self.ctx.spec.finetune == "full":
            from halo_trainer_mlx.core.model import load_model

            model.update(load_model(self.ctx.resolved.model_path, self.ctx.resolved.dtype).parameters())
            return
        _reset_adapters(model)

    def summary(self) -> dict[str, Any]:
        return self.prober.summary()


def make_probe(ctx: JobContext) -> MLXProbe | None:
    spec = getattr(ctx.spec, "probe", None)
    if spec is None:
        return None
    submit = probe_lib.bus_submitter(ctx.reporter, spec.timeout_s)  # looked up now: tests script the eval service
    if submit is None:
        log.warning("probe: no bus to reach the eval service from this process; probing is off")
        return None
    return MLXProbe(ctx, submit)


def _reset_adapters(model: Any) -> None:
    """No checkpoint passed: every adapter becomes the identity (LoRA B zero; DoRA's magnitude the base's norms)."""
    import mlx.core as mx

    for _, module in model.named_modules():
        if hasattr(module, "lora_b"):
            module.lora_b = mx.zeros_like(module.lora_b)
            if hasattr(module, "m") and hasattr(module, "set_linear"):
                module.set_linear(module.linear)  # recomputes m from the base weight
    mx.eval(model.parameters())
