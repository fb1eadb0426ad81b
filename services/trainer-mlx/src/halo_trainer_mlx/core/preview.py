"""Dry run on MLX: validate a spec and its data for this backend and render samples, without training.

``preview_job("sft", spec, 2)`` returns a :class:`PreviewResult` like trainer-torch's (same encoder, so the
rendered trained / masked tokens are what would be trained); a field MLX cannot honour is a problem naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from halo_common.errors import HaloError
from halo_schemas.training import PreviewResult, TrainSpecBase
from halo_training.data import DataError, load_training_data
from halo_training.runs import validate_spec

from halo_trainer_mlx.core.capabilities import check_spec
from halo_trainer_mlx.core.model import load_tokenizer, resolve_settings


def preview_job(method: str, spec: dict[str, Any], num_samples: int = 1,
                guard: Callable[[TrainSpecBase], None] | None = None) -> PreviewResult:
    from halo_trainer_mlx.core.recipes import recipe

    typed = validate_spec(method, spec)
    if guard is not None:
        guard(typed)
    try:
        check_spec(method, typed)
        resolved = resolve_settings(typed)
    except HaloError as exc:
        return PreviewResult(ok=False, method=method, backend="mlx", problems=[str(exc)])
    base = {"method": method, "backend": "mlx", "resolved": resolved.to_dict()}
    try:
        data = load_training_data(typed.data, method, seed=typed.seed,
                                  completion_only=bool(getattr(typed, "completion_only_loss", True)))
    except DataError as exc:
        return PreviewResult(ok=False, problems=exc.problems, **base)
    except HaloError as exc:
        return PreviewResult(ok=False, problems=[str(exc)], **base)
    counts = {"format": data.format_label, "records": len(data.train), "eval_records": len(data.eval)}
    try:
        tok = load_tokenizer(resolved.model_path)
    except HaloError as exc:
        return PreviewResult(ok=False, problems=[str(exc)], **counts, **base)
    return PreviewResult(ok=True, samples=recipe(method).preview(typed, tok, data, num_samples), **counts, **base)
