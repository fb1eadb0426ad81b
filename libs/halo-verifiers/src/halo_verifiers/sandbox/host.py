"""The ``host`` and ``container`` mechanisms: no isolation of their own — limits, a private uid (as
root) and the reduced environment only. ``container`` is for compose/helm, where the container is
the boundary; ``host`` runs only with HALO_VERIFIER_SANDBOX_ALLOW_HOST=1 (trusted code)."""

from __future__ import annotations

from halo_verifiers.sandbox.base import Mechanism
from halo_verifiers.sandbox.launcher import Launcher


class HostLauncher(Launcher):
    mechanism = Mechanism.HOST


class ContainerLauncher(Launcher):
    mechanism = Mechanism.CONTAINER

    def isolation(self) -> list[str]:
        return ["container", "private-workdir"]
