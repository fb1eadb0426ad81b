"""Import every wire model so the schema registry is complete (used by export and the bus)."""

from halo_schemas import events, health, jobs  # noqa: F401
from halo_schemas import training  # noqa: F401
from halo_schemas import registry  # noqa: F401
from halo_schemas import verifiers  # noqa: F401
from halo_schemas import rollout  # noqa: F401
from halo_schemas import rl  # noqa: F401
