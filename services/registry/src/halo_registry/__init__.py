"""Halo Forge registry: the source of truth for runs, metrics, evaluations, artifacts and lineage.

Run it with ``python -m halo_registry``; other services talk to it through
:class:`halo_clients.registry.RegistryClient`.
"""

__version__ = "0.1.0"
