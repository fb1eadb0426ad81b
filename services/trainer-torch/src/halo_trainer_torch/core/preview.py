"""Dry run: validate a spec and its data for this backend and render samples, without training.

``preview_job("sft", spec, 2)`` returns a :class:`PreviewResult`: the detected format, record counts, every
problem (file:line and field), the resolved ``auto`` settings, and rendered samples where each token run is
marked trained or masked — produced by the same encoders training uses. An invalid spec raises
:class:`BadRequest` naming the field (the gateway answers 400).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from halo_common.errors import HaloError
from halo_schemas.training import PreviewResult, TrainSpecBase

from halo_trainer_torch.core.components.data import DataError
from halo_trainer_torch.core.components.model import load_tokenizer, resolve_settings
from halo_trainer_torch.core.runner import quiet_libraries, validate_spec


def preview_job(method: str, spec: dict[str, Any], num_samples: int = 1,
                guard: Callable[[TrainSpecBase], None] | None = None) -> PreviewResult:
    """``guard``: the host's policy (see :mod:`halo_trainer_torch.core.policy`); its error is raised (a dry run
    loads the tokenizer, so a spec asking to run model code is refused here as in a job)."""
    from halo_trainer_torch.core.components.data import load_training_data
    from halo_trainer_torch.core.recipes import RECIPES

    quiet_libraries()
    typed = validate_spec(method, spec)
    if guard is not None:
        guard(typed)
    try:
        resolved = resolve_settings(typed)
    except HaloError as exc:
        return PreviewResult(ok=False, method=method, problems=[str(exc)])
    base = {"method": method, "backend": resolved.backend, "resolved": resolved.to_dict()}
    try:
        data = load_training_data(typed.data, method, completion_only=bool(getattr(typed, "completion_only_loss", True)),
                                  seed=typed.seed)
    except DataError as exc:
        return PreviewResult(ok=False, problems=exc.problems, **base)
    except HaloError as exc:
        return PreviewResult(ok=False, problems=[str(exc)], **base)
    try:
        tok = load_tokenizer(resolved.model_path, typed.trust_remote_code)
    except HaloError as exc:
        return PreviewResult(ok=False, format=data.format_label, records=len(data.train), eval_records=len(data.eval),
                             problems=[str(exc)], **base)
    samples = RECIPES[method].preview(typed, tok, data, num_samples)
    return PreviewResult(ok=True, format=data.format_label, records=len(data.train), eval_records=len(data.eval),
                         samples=samples, **base)
