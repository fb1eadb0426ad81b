"""Halo Forge NATS wiring. Import subjects from :mod:`halo_bus.subjects` only."""

from halo_bus.api import Bus, EventRecord, JobDelivery, ServiceRegistration, Subscription
from halo_bus.memory import InMemoryBus
from halo_bus.nats_bus import NatsBus

__all__ = ["Bus", "EventRecord", "InMemoryBus", "JobDelivery", "NatsBus", "ServiceRegistration", "Subscription"]
