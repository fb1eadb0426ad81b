"""The MLX training loop every trainer-mlx recipe runs: accumulation, clipping, schedule, metrics, events,
checkpoints, cancel / preempt, evaluation, early stopping and the spec's ``probe`` (:mod:`halo_trainer_mlx.core.probe`:
probed checkpoints judged by the eval service; ``on_regression: stop`` ends the run on the last passing weights).

A recipe supplies a :class:`Task`: the micro-batches of each epoch (a fixed order per ``(seed, epoch)``, so a
resumed run sees exactly the batches it would have seen) and the summed loss of one micro-batch. The loss of an
optimizer step is the sum over its micro-batches divided by the number of loss items in all of them (as
transformers does with ``num_items_in_batch``), so gradient accumulation does not change the result::

    result = train_loop(ctx, model, task)            # -> RecipeResult (succeeded | cancelled | preempted)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from halo_training.reporting import power_watts
from halo_training.runs import RecipeResult

from halo_trainer_mlx.core.checkpoint import load_checkpoint, save_checkpoint
from halo_trainer_mlx.core.context import JobContext
from halo_trainer_mlx.core.model import parameter_counts
from halo_trainer_mlx.core.probe import make_probe
from halo_trainer_mlx.core.schedule import lr_factor, total_steps, warmup_steps

log = logging.getLogger("halo_trainer_mlx")


@dataclass
class Batch:
    """One micro-batch: MLX arrays for the loss function, real (non-padding) tokens, and loss items."""

    arrays: dict[str, Any]
    tokens: int
    items: int


class Task(Protocol):
    def epoch_batches(self, epoch: int) -> list[Batch]:
        """The training micro-batches of ``epoch``, in order (deterministic per seed and epoch)."""

    def loss(self, model: Any, batch: Batch) -> tuple[Any, dict[str, Any]]:
        """(summed loss over the batch's loss items, summed per-item statistics) as MLX scalars. Runs inside
        ``mx.compile``: it may read only ``batch.arrays`` (and their shapes), not ``batch.tokens`` / ``items``."""

    def eval_batches(self) -> list[Batch]:
        """Evaluation micro-batches (empty without eval data)."""


# Optional Task methods (an on-policy task, e.g. GRPO, whose batches depend on the current weights):
#   micro_batches_per_epoch() -> int            instead of len(epoch_batches(0))
#   step_batches(step, model) -> list[Batch]    the micro-batches of optimizer step ``step`` (0-based), built now
#   step_metrics() -> dict[str, float]          extra numbers for the metrics line of the step just taken


@dataclass
class LoopState:
    step: int = 0
    tokens: int = 0
    evals: list[float] = field(default_factory=list)


def make_optimizer(ctx: JobContext) -> Any:
    import mlx.optimizers as optim

    spec, lr = ctx.spec, ctx.resolved.learning_rate
    if spec.optimizer in ("adamw_torch", "adamw_torch_fused"):
        # torch's AdamW: bias-corrected moments, decoupled decay.
        return optim.AdamW(learning_rate=lr, betas=[0.9, 0.999], eps=1e-8, weight_decay=spec.weight_decay,
                           bias_correction=True)
    if spec.optimizer == "sgd":
        return optim.SGD(learning_rate=lr, weight_decay=spec.weight_decay)
    return optim.Adafactor(learning_rate=lr, relative_step=False, scale_parameter=False)


def memory_metrics() -> dict[str, float]:
    """MLX active/peak memory (Metal; reported where MLX tracks it), else the process's resident set."""
    import mlx.core as mx

    out: dict[str, float] = {}
    active, peak = float(mx.get_active_memory()), float(mx.get_peak_memory())
    if peak > 0:
        out.update(mlx_active_memory_bytes=active, mlx_peak_memory_bytes=peak, memory_bytes=peak)
    else:
        try:
            import psutil

            out["memory_bytes"] = float(psutil.Process().memory_info().rss)
        except Exception:  # pragma: no cover
            pass
    return out


def _evaluate(model: Any, task: Task) -> float | None:
    import mlx.core as mx

    batches = task.eval_batches()
    if not batches:
        return None
    total, items = 0.0, 0
    for b in batches:
        loss, _ = task.loss(model, b)
        mx.eval(loss)
        total += float(loss.item())
        items += b.items
    return total / max(1, items)


def train_loop(ctx: JobContext, model: Any, task: Task, *, extra_state: dict[str, Any] | None = None) -> RecipeResult:
    """Run the optimizer steps of ``ctx.spec`` (resuming from ``ctx.resume_from``)."""
    import mlx.core as mx
    import mlx.nn as nn

    spec, run, reporter, control = ctx.spec, ctx.run, ctx.reporter, ctx.control
    optimizer = make_optimizer(ctx)
    step_batches = getattr(task, "step_batches", None)
    step_metrics = getattr(task, "step_metrics", None)
    first_epoch = [] if step_batches is not None else task.epoch_batches(0)
    n_micro = task.micro_batches_per_epoch() if step_batches is not None else len(first_epoch)  # type: ignore[attr-defined]
    if not n_micro:
        raise ValueError("no training batches")
    per_epoch, planned = total_steps(micro_batches_per_epoch=n_micro, grad_accum=spec.grad_accum,
                                     epochs=spec.epochs, max_steps=spec.max_steps)
    warmup = warmup_steps(planned, spec.warmup_ratio)
    state = LoopState()
    if ctx.resume_from is not None:
        saved = load_checkpoint(ctx.resume_from, model, optimizer)
        state = LoopState(step=int(saved["global_step"]), tokens=int(saved.get("tokens", 0)),
                          evals=list(saved.get("evals", [])))
    resumed_from = state.step or None
    trainable, total = parameter_counts(model)
    start_fp = _fingerprint(model)

    def step_loss(model: Any, batch: Batch, n_items: int) -> tuple[Any, dict[str, Any]]:
        loss, stats = task.loss(model, batch)
        return loss / n_items, stats

    value_and_grad = nn.value_and_grad(model, lambda m, b, n: step_loss(m, b, n))
    micro_step, update_step, whole_step = _compiled_steps(model, optimizer, value_and_grad, spec.max_grad_norm,
                                                          compiled=step_batches is None)
    reporter.started(total_steps=planned, resumed_from_step=resumed_from, info={"tokens": state.tokens})
    probe = make_probe(ctx)
    if probe is not None:
        probe.start()
    power_watts()  # the first reading imports the telemetry samplers: not inside the timed loop
    t_loop, tokens_at_start = time.monotonic(), state.tokens
    last_emit, last_t, last_tokens = 0.0, time.monotonic(), state.tokens
    stop: str | None = None
    epoch_cache: dict[int, list[Batch]] = {0: first_epoch}
    early_stopped_at: int | None = None

    def batches_of(step: int) -> list[Batch]:
        epoch, within = divmod(step, per_epoch)
        if epoch not in epoch_cache:
            epoch_cache.clear()
            epoch_cache[epoch] = task.epoch_batches(epoch)
        return epoch_cache[epoch][within * spec.grad_accum:(within + 1) * spec.grad_accum]

    def checkpoint() -> None:
        probed = probe is not None and probe.due(state.step)
        path = save_checkpoint(run, state.step, model, optimizer,
                               {"tokens": state.tokens, "evals": state.evals, **(extra_state or {})},
                               spec.keep_checkpoints, extra=probe.writer(model) if probed else None,
                               protect=probe.last_good if probe is not None else None)
        reporter.checkpointed(state.step, str(path))
        if probed:
            probe.check(path, state.step, planned)  # type: ignore[union-attr]

    while state.step < planned:
        micro = step_batches(state.step, model) if step_batches is not None else batches_of(state.step)
        n_items = max(1, sum(b.items for b in micro))
        lr_used = ctx.resolved.learning_rate * lr_factor(spec.lr_scheduler, state.step, planned, warmup)
        optimizer.learning_rate = mx.array(lr_used, dtype=mx.float32)
        n_arr = mx.array(float(n_items), dtype=mx.float32)
        grads_acc: Any = None
        loss_sum = mx.array(0.0)
        stats_acc: dict[str, Any] = {}
        if len(micro) == 1:  # no accumulation: forward, backward, clip and update in one compiled call
            loss_sum, stats_acc, grad_norm = whole_step(micro[0].arrays, n_arr)
        else:
            for b in micro:
                loss, stats, grads_acc = micro_step(b.arrays, n_arr, grads_acc)
                loss_sum = loss_sum + loss
                for k, v in stats.items():
                    stats_acc[k] = stats_acc.get(k, 0.0) + v
                mx.eval(grads_acc, loss_sum)  # bound memory: one micro-batch's graph at a time
            grad_norm = update_step(grads_acc)
        mx.eval(model.state, optimizer.state, grad_norm, loss_sum, stats_acc)
        state.step += 1
        state.tokens += sum(b.tokens for b in micro)
        loss_value = float(loss_sum.item())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss became {loss_value} at step {state.step}; lower learning_rate")
        now = time.monotonic()
        last = state.step >= planned
        if state.step == 1 or state.step % spec.log_every_steps == 0 or last:
            metrics: dict[str, float] = {"loss": loss_value, "grad_norm": float(grad_norm.item()),
                                         "learning_rate": lr_used, "tokens": float(state.tokens)}
            for k, v in stats_acc.items():
                metrics[k] = float(v.item() if hasattr(v, "item") else v) / n_items
            if step_metrics is not None:
                metrics.update(step_metrics())
            if now > last_t and state.tokens > last_tokens:
                metrics["tokens_per_second"] = (state.tokens - last_tokens) / (now - last_t)
            last_t, last_tokens = now, state.tokens
            metrics.update(memory_metrics())
            run.append_metrics({"step": state.step, "epoch": state.step / per_epoch, "ts": time.time(), **metrics})
            if last or now - last_emit >= spec.progress_interval_s:
                power = power_watts()
                if power is not None:
                    metrics["power_watts"] = power
                last_emit = now
                reporter.progress(state.step, planned, metrics)
        eval_every = spec.eval_every_steps or spec.checkpoint_every_steps
        if task.eval_batches() and (state.step % eval_every == 0 or last):
            eval_loss = _evaluate(model, task)
            if eval_loss is not None:
                state.evals.append(eval_loss)
                run.append_metrics({"step": state.step, "epoch": state.step / per_epoch, "ts": time.time(),
                                    "eval_loss": eval_loss})
                reporter.progress(state.step, planned, {"eval_loss": eval_loss})
                if spec.early_stopping is not None and _should_stop(state.evals, spec.early_stopping):
                    early_stopped_at = state.step
        if state.step % spec.checkpoint_every_steps == 0:
            checkpoint()
        stop = control.stop_reason()
        if early_stopped_at is not None and stop is None:
            stop = "early-stopped"
        if probe is not None and probe.stopped and stop is None:
            stop = "probe-regressed"
        if stop is not None:
            if stop == "preempted" and state.step % spec.checkpoint_every_steps != 0:
                checkpoint()  # resume right here
            break
    train_seconds = time.monotonic() - t_loop
    if stop == "probe-regressed":
        probe.restore(model)  # type: ignore[union-attr]  # the export that follows writes these weights
    result = RecipeResult(
        state="succeeded", steps=state.step, total_steps=planned, epochs=state.step / per_epoch, stop_reason=stop,
        trainable_parameters=trainable, total_parameters=total, resumed_from_step=resumed_from,
        train_seconds=train_seconds, attempt_tokens=state.tokens - tokens_at_start,
    )
    result.weights_updated = state.step > 0 and _fingerprint(model) != start_fp
    if stop in ("cancelled", "preempted", "supervisor-gone"):
        result.state = "cancelled" if stop == "cancelled" else "preempted"
    if early_stopped_at is not None:
        result.extras["early_stopped_at_step"] = early_stopped_at
    if state.evals:
        result.extras["eval_loss"] = state.evals[-1]
    if probe is not None:
        result.extras["probe"] = probe.summary()
    return result


def _compiled_steps(model: Any, optimizer: Any, value_and_grad: Any, max_grad_norm: float,
                    compiled: bool) -> tuple[Any, Any, Any]:
    """(micro_step, update_step, whole_step): the forward/backward of one micro-batch (accumulating gradients),
    the clip + optimizer update, and both for a step of one micro-batch; compiled with ``mx.compile`` over the model, optimizer and random state as mlx-lm's
    trainer does (fused kernels, no per-op dispatch). Batches of a new shape trace once more. On-policy tasks
    (GRPO), whose batches carry host-side numbers, run them uncompiled."""
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx.utils import tree_map

    def micro(arrays: dict[str, Any], n_items: Any, acc: Any) -> tuple[Any, Any, Any]:
        (loss, stats), grads = value_and_grad(model, Batch(arrays=arrays, tokens=0, items=0), n_items)
        if acc is not None:
            grads = tree_map(lambda a, g: a + g, acc, grads)
        return loss, stats, grads

    def update(grads: Any) -> Any:
        grads, norm = optim.clip_grad_norm(grads, max_grad_norm)
        optimizer.update(model, grads)
        return norm

    def whole(arrays: dict[str, Any], n_items: Any) -> tuple[Any, Any, Any]:
        loss, stats, grads = micro(arrays, n_items, None)
        return loss, stats, update(grads)

    if not compiled:
        return micro, update, whole
    if not optimizer.state:  # create the moments now, so the compiled functions see the whole state
        optimizer.init(model.trainable_parameters())
    state = [model.state, optimizer.state, mx.random.state]
    return tuple(mx.compile(f, inputs=state, outputs=state) for f in (micro, update, whole))  # type: ignore[return-value]


def _should_stop(evals: list[float], es: Any) -> bool:
    best, since = math.inf, 0
    for v in evals:
        if v < best - es.min_delta:
            best, since = v, 0
        else:
            since += 1
    return since >= es.patience


def _fingerprint(model: Any) -> float:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    leaves = [v for _, v in tree_flatten(model.trainable_parameters())]
    return float(sum(mx.sum(mx.abs(v.astype(mx.float32))).item() for v in leaves))
