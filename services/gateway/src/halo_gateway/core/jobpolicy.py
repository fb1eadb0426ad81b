"""The gateway's checks of a training spec before it reaches a trainer (see :mod:`halo_common.specpolicy`).

``check_job(spec, settings)`` applies the host's policy: code execution only where the operator allowed it
(``HALO_ALLOW_REMOTE_CODE``; never for a model in an imported bundle), no relative paths, and, when the
gateway is exposed (bound to a non-loopback address), local paths confined to ``HALO_HOME`` and
``HALO_GATEWAY_DATA_ROOTS``. ``preflight=True`` (submit) also checks that a local model exists and that
the data file's first records parse with a recognisable format, so a typo is a 4xx answer, not a failed run.
"""

from __future__ import annotations

from pathlib import Path

from halo_common.specpolicy import check_spec_policy, preflight_refs
from halo_common.tokens import is_loopback_host
from halo_schemas.training import TrainSpecBase

from halo_gateway.settings import GatewaySettings


def confinement_roots(settings: GatewaySettings) -> list[Path] | None:
    """HALO_HOME plus the configured data roots when exposed; None (no confinement) on loopback."""
    if is_loopback_host(settings.host):
        return None
    return [settings.home, *settings.data_roots]


def check_job(spec: TrainSpecBase, settings: GatewaySettings, *, preflight: bool) -> None:
    """Raise the HaloError (400 / 403 / 404 / 422) that names the first field this host refuses."""
    check_spec_policy(code_requests=spec.code_requests(), model_refs=spec.model_refs(), data_refs=spec.data_refs(),
                      allow_remote_code=settings.allow_remote_code, paths=settings.paths,
                      roots=confinement_roots(settings))
    if preflight:
        preflight_refs(spec.model_refs(), spec.data_refs(), columns=spec.data.columns, text_field=spec.data.text_field,
                       data_format=spec.data.format)
