"""Halo Forge serve: OpenAI-compatible serving of every model and adapter the workstation makes."""

__version__ = "0.1.0"
