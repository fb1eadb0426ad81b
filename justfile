# Halo Forge entry points. `just` is optional: every recipe is a plain command.

# create .venv and install the whole workspace
setup:
    scripts/dev setup

# the full test suite (what CI runs)
test *ARGS:
    scripts/dev test {{ARGS}}

# end-to-end demo on the built-in tiny model
demo:
    scripts/dev demo

# start / stop the embedded local stack
up:
    .venv/bin/halo-forge up

down:
    .venv/bin/halo-forge down

lint:
    .venv/bin/ruff check libs services cli tests benchmarks

fmt:
    .venv/bin/ruff format libs services cli tests benchmarks

# regenerate docs/schemas and docs/messaging.md (tests fail when they are stale)
schemas:
    .venv/bin/python -m halo_schemas.export docs/schemas
    .venv/bin/python -m halo_bus.subjects > docs/messaging.md

docs: schemas

# run one benchmark: just bench bus
bench NAME *ARGS:
    scripts/dev bench {{NAME}} {{ARGS}}

# scaffold a new service that passes the layout test: just new-service sweeps
new-service NAME *ARGS:
    scripts/new-service {{NAME}} {{ARGS}}
