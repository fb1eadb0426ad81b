"""Halo Forge verifier-sandbox: the verifier library (:mod:`halo_verifiers`) served over the bus, with a result
cache and Prometheus metrics. ``python -m halo_verifier_sandbox`` runs it; callers use
:class:`halo_clients.verifier_sandbox.VerifierClient`.

Plugins written against ``from halo_verifier_sandbox import Verifier, register_verifier`` keep working: the
library's public names are re-exported here.
"""

from halo_verifiers import *  # noqa: F403  (the plugin API, re-exported)
from halo_verifiers import __all__  # noqa: F401

__version__ = "0.1.0"
