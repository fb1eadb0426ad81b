"""How many trials the host runs at once, and the check of a sweep's ``parallel_trials`` against it.

::

    slots = host_trial_slots(settings.trial_slots)     # the setting, else the accelerator devices (1 on CPU)
    check_parallel(sweep, slots)                       # BadRequest naming parallel_trials when it asks for more

A trial is a whole training job on one device: two trials on one GPU share its memory and its compute (each runs
at about half speed, and the second may not fit), so a sweep asks for at most one trial per device. On a CPU host
there is one slot: trials on the same cores only slow each other down. ``oversubscribe: true`` lifts the cap (the
user knows the trials are small enough).
"""

from __future__ import annotations

from halo_common.backend import capabilities
from halo_common.errors import BadRequest
from halo_schemas.sweeps import SweepSpec


def device_slots() -> int:
    """The host's accelerator devices (CUDA/ROCm: every visible device; MPS/MLX: 1), at least 1 (CPU)."""
    return max(1, capabilities().device_count)


def host_trial_slots(configured: int | None = None) -> int:
    """``configured`` (``HALO_SWEEPS_TRIAL_SLOTS``: trainers on another host) or :func:`device_slots`."""
    return configured if configured is not None else device_slots()


def check_parallel(sweep: SweepSpec, slots: int) -> None:
    """BadRequest (``parallel_trials``) when the sweep runs more trials at once than the host has slots for,
    unless it sets ``oversubscribe``."""
    if sweep.parallel_trials <= slots or sweep.oversubscribe:
        return
    devices = f"{slots} trial slot{'s' if slots != 1 else ''} ({_what(slots)})"
    raise BadRequest(f"parallel_trials: {sweep.parallel_trials} trials at once, but this host has {devices}; lower "
                     f"parallel_trials to {slots}, or set oversubscribe: true to share devices between trials",
                     param="parallel_trials")


def _what(slots: int) -> str:
    caps = capabilities()
    if caps.device_count == 0:
        return "CPU: one trial at a time"
    if slots != caps.device_count:
        return "HALO_SWEEPS_TRIAL_SLOTS"
    return f"{caps.device_count} {caps.backend.value} device{'s' if caps.device_count != 1 else ''}"
