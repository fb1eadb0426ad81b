"""Import every wire model so the schema registry is complete (used by export and the bus)."""

from halo_schemas import (  # noqa: F401
    convert,  # noqa: F401
    data,  # noqa: F401
    eval,  # noqa: F401
    events,
    health,
    jobs,
    registry,  # noqa: F401
    replay,  # noqa: F401
    rl,  # noqa: F401
    rollout,  # noqa: F401
    serve,  # noqa: F401
    sweeps,  # noqa: F401
    training,  # noqa: F401
    verifiers,  # noqa: F401
)
