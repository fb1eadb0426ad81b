"""The gateway: Halo Forge's HTTP edge. ``python -m halo_gateway`` runs it."""

__version__ = "0.1.0"
