"""What every recipe plugs into the Hugging Face Trainer: the reporter (events out of the training thread),
the job control (cancel / preempt / supervisor checks), token counting, metrics.jsonl, atomic checkpoints
and early stopping.

* :class:`Reporter` — where progress goes. The service's reporter publishes bus events; multi-process runs
  use :class:`FileReporter` (rank 0 writes ``logs/events.jsonl``, the service tails it).
* :class:`JobControl` — thread-safe stop flags checked after every optimizer step.
* :class:`HaloTrainerMixin` — mix into a Trainer subclass first (``class T(HaloTrainerMixin, SFTTrainer)``)
  to count non-padding tokens across ranks.
* :class:`HaloCallback` — metrics rows, rate-limited progress events, checkpoint finalisation (the Trainer
  writes under ``.staging``; the callback renames complete checkpoints into ``checkpoints/``), pruning,
  early stopping on eval loss.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from halo_training.reporting import (  # noqa: F401  (re-exported: recipes and the service import them from here)
    FileReporter,
    JobControl,
    Reporter,
    power_watts,
    replay_file_events,
)
from transformers import TrainerCallback

from halo_trainer_torch.core.components.rundir import RunDir

log = logging.getLogger("halo_trainer_torch")

#: Trainer log keys that are bookkeeping, not metrics.
_DROP_KEYS = {"total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second", "num_tokens",
              "epoch", "step", "train_loss", "halo_tokens", "eval_runtime", "eval_samples_per_second",
              "eval_steps_per_second", "eval_num_tokens"}
#: Renames from the libraries' metric names to ours (docs/metrics.md lists them).
_RENAME = {"rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected",
           "rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin",
           "logps/chosen": "logps_chosen", "logps/rejected": "logps_rejected"}


def memory_bytes() -> float | None:
    """Peak accelerator memory of this process (CUDA/ROCm), current MPS allocation, or CPU resident set."""
    try:
        import torch

        if torch.cuda.is_available():
            return float(torch.cuda.max_memory_allocated())
        mps = getattr(torch, "mps", None)
        if mps is not None and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return float(torch.mps.current_allocated_memory())
    except Exception:  # pragma: no cover - device query failures must not stop training
        pass
    try:
        import psutil

        return float(psutil.Process().memory_info().rss)
    except Exception:  # pragma: no cover
        return None


def _dist() -> Any:
    try:
        import torch.distributed as dist

        return dist if dist.is_available() and dist.is_initialized() else None
    except Exception:  # pragma: no cover
        return None


class HaloTrainerMixin:
    """Counts non-padding training tokens (all ranks) and exposes them in logs as ``halo_tokens``.

    A collator may add ``num_real_tokens`` (popped before the forward); otherwise the attention mask is
    summed. The count is part of ``log_history``, so it survives a resume.
    """

    halo_tokens_local: int = 0
    halo_tokens_base: int = 0  # tokens of earlier attempts (from the checkpoint's log history)

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        n = inputs.pop("num_real_tokens", None)
        if self.model.training:  # type: ignore[attr-defined]
            if n is None:
                mask = inputs.get("attention_mask")
                n = mask.sum() if mask is not None else inputs["input_ids"].numel()
            self.halo_tokens_local += int(n)
        return super()._prepare_inputs(inputs)  # type: ignore[misc]

    def halo_tokens(self) -> int:
        """Tokens trained so far over all ranks and attempts (a collective call under DDP)."""
        local = self.halo_tokens_local
        dist = _dist()
        if dist is not None:
            import torch

            device = self.args.device  # type: ignore[attr-defined]
            t = torch.tensor([local], dtype=torch.long, device=device)
            dist.all_reduce(t)
            local = int(t.item())
        return self.halo_tokens_base + local

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:  # type: ignore[override]
        if "loss" in logs or not any(k.startswith("eval_") for k in logs):
            logs["halo_tokens"] = self.halo_tokens()
        super().log(logs, start_time)  # type: ignore[misc]


class HaloCallback(TrainerCallback):
    """Bridges the Trainer to the run directory, the reporter and the job control. Set ``trainer`` after
    building the trainer (``cb.trainer = trainer``)."""

    def __init__(self, run: RunDir, reporter: Reporter, control: JobControl, *, keep_checkpoints: int = 2,
                 progress_interval_s: float = 1.0, early_stopping: tuple[int, float] | None = None) -> None:
        self.run, self.reporter, self.job = run, reporter, control
        self.keep_checkpoints = keep_checkpoints
        self.progress_interval_s = progress_interval_s
        self.early_stopping = early_stopping
        self.trainer: Any = None
        self.stop_reason: str | None = None
        self.early_stopped_at: int | None = None
        self._last_emit = 0.0
        self._last_log_t: float | None = None
        self._last_log_tokens = 0
        self.start_step = 0
        self._loop_started: float | None = None
        self._start_tokens = 0
        self.train_seconds = 0.0
        self.attempt_tokens = 0

    # ---- lifecycle ---------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.start_step = state.global_step
        prior = [h["halo_tokens"] for h in state.log_history if "halo_tokens" in h]
        if prior and self.trainer is not None:
            self.trainer.halo_tokens_base = int(prior[-1])
        self._last_log_tokens = int(prior[-1]) if prior else 0
        self._last_log_t = time.monotonic()
        self._loop_started, self._start_tokens = time.monotonic(), self._last_log_tokens
        if state.is_world_process_zero:
            self.reporter.started(total_steps=int(state.max_steps) if state.max_steps else None,
                                  resumed_from_step=int(state.global_step) or None,
                                  info={"tokens": self._last_log_tokens})

    _CODES = {None: 0, "preempted": 1, "cancelled": 2, "supervisor-gone": 3}

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self._loop_started is not None:
            self.train_seconds = time.monotonic() - self._loop_started
            self.attempt_tokens = self._last_log_tokens - self._start_tokens

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        reason = self.job.stop_reason()
        dist = _dist()
        if dist is not None:
            # Every rank must stop at the same step, or one would wait forever in the next collective.
            import torch

            code = torch.tensor([self._CODES.get(reason, 2)], dtype=torch.long, device=args.device)
            dist.all_reduce(code, op=dist.ReduceOp.MAX)
            reason = {v: k for k, v in self._CODES.items()}[int(code.item())]
        if reason is None:
            return
        self.stop_reason = reason
        control.should_training_stop = True
        if reason == "preempted":
            control.should_save = True  # leave a checkpoint at this step so the job resumes right here

    # ---- metrics -----------------------------------------------------------------------------
    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return  # the end-of-training summary log repeats what the summary file holds
        step = int(state.global_step)
        now = time.monotonic()
        metrics: dict[str, float] = {}
        for key, value in logs.items():
            if key in _DROP_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                continue  # JSON (and the event schema) cannot carry NaN/inf; the summary reports divergence
            metrics[_RENAME.get(key, key)] = float(value)
        is_eval = any(k.startswith("eval_") for k in logs)
        if "halo_tokens" in logs:
            tokens = int(logs["halo_tokens"])
            dt = now - (self._last_log_t or now)
            if dt > 0 and tokens > self._last_log_tokens:
                metrics["tokens_per_second"] = (tokens - self._last_log_tokens) / dt
            metrics["tokens"] = float(tokens)
            self._last_log_tokens, self._last_log_t = tokens, now
        if not is_eval:
            mem = memory_bytes()
            if mem is not None:
                metrics["memory_bytes"] = mem
        row = {"step": step, "epoch": float(state.epoch or 0.0), "ts": time.time(), **metrics}
        self.run.append_metrics(row)
        last = state.max_steps and step >= state.max_steps
        if is_eval or last or now - self._last_emit >= self.progress_interval_s:
            power = power_watts()
            if power is not None:
                metrics["power_watts"] = power
            self._last_emit = now
            self.reporter.progress(step, int(state.max_steps) if state.max_steps else None, metrics)

    # ---- checkpoints -------------------------------------------------------------------------
    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        dist = _dist()
        if dist is not None:
            dist.barrier()  # every rank has written its part (RNG state, shards) into the staging dir
        if state.is_world_process_zero:
            staged = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if staged.exists():
                final = self.run.finalize_checkpoint(staged)
                self.run.prune_checkpoints(self.keep_checkpoints)
                self.reporter.checkpointed(int(state.global_step), str(final))
        if dist is not None:
            dist.barrier()

    # ---- early stopping ----------------------------------------------------------------------
    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kw: Any) -> None:
        if self.early_stopping is None:
            return
        patience, min_delta = self.early_stopping
        # Computed from the log history (restored with a checkpoint), so a resume keeps the count.
        values = [h["eval_loss"] for h in state.log_history if "eval_loss" in h]
        best, since = math.inf, 0
        for v in values:
            if v < best - min_delta:
                best, since = v, 0
            else:
                since += 1
        if since >= patience:
            control.should_training_stop = True
            self.early_stopped_at = int(state.global_step)
            self.stop_reason = self.stop_reason or "early-stopped"
