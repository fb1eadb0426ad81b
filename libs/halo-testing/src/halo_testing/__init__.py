"""Shared test support for Halo Forge: pytest fixtures (``halo_testing.fixtures``, loaded by the root
conftest), the real-stack helper (``halo_testing.stack``), and plain helpers importable from here::

    from halo_testing import RunEmitter, await_until, loss_at, wait_until
"""

from halo_testing.run_emitter import T0, RunEmitter, loss_at
from halo_testing.wait import await_until, wait_until

__all__ = ["T0", "RunEmitter", "await_until", "loss_at", "wait_until"]
