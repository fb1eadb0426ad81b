"""Halo Forge data service: the steps between "I have prompts" and "I have a training-ready dataset"."""

__version__ = "0.1.0"
