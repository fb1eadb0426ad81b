"""The trainer-mlx service: consumes ``halo.job.trainer-mlx.<method>`` and serves ``cancel`` and ``preview``.

Run it with ``python -m halo_trainer_mlx`` (``halo-forge up`` starts it wherever ``mlx`` imports). Deliveries,
cancel, preview and the SIGTERM drain are the shared :class:`halo_training.jobs.TrainerService` — the same
contract as trainer-torch, so the gateway, CLI, registry and dashboard treat both alike.
"""

from __future__ import annotations

from typing import Any

from halo_schemas.training import PreviewRequest, PreviewResult, TrainingSummary
from halo_training.jobs import TrainerService, TrainingJobExecution
from halo_training.policy import spec_guard

from halo_trainer_mlx import __version__, handlers
from halo_trainer_mlx.core.capabilities import METHODS
from halo_trainer_mlx.settings import TrainerMlxSettings


class TrainerMlx(TrainerService):
    name = "trainer-mlx"
    version = __version__
    description = "SFT (full, LoRA, DoRA), DPO, ORPO, reward models and GRPO on Apple MLX: Metal, or MLX's CPU build"
    settings_cls = TrainerMlxSettings
    methods = METHODS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = spec_guard(self.settings)  # this worker's own policy, whatever the gateway decided

    def checks(self) -> dict[str, str]:
        try:
            import mlx.core as mx

            mx.eval(mx.array([1.0]) + 1)  # the backend computes (Metal, or the CPU build)
        except Exception as exc:  # pragma: no cover - an mlx wheel without a working backend
            return {"mlx": f"unavailable: {exc}"}
        return {"mlx": "ok"}

    def train(self, execution: TrainingJobExecution) -> TrainingSummary:
        return handlers.train(self, execution)

    def preview(self, req: PreviewRequest) -> PreviewResult:
        return handlers.preview(self, req)
