"""One module per command area; each has ``register(app: typer.Typer)``."""
