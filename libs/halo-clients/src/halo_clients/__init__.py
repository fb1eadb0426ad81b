"""Typed clients of every Halo Forge service over the bus — the only way one service (or the gateway, or
the CLI in local mode) talks to another. Each method is one request/reply (or a job submission) on a subject
from :mod:`halo_bus.subjects`; errors arrive as the service raised them, an absent service as
:class:`~halo_common.errors.Unavailable`.
"""

from halo_clients.data import DataClient
from halo_clients.eval import EvalClient
from halo_clients.jobs import JobRoute, JobsClient, choose_route, register_route, routes_for
from halo_clients.registry import RegistryClient
from halo_clients.rollout import RolloutClient
from halo_clients.serve import ServeClient
from halo_clients.trainer_torch import TrainerClient
from halo_clients.verifier_sandbox import VerifierClient

__all__ = ["DataClient", "EvalClient", "JobRoute", "JobsClient", "RegistryClient", "RolloutClient", "ServeClient", "TrainerClient", "VerifierClient",
           "choose_route", "register_route", "routes_for"]
