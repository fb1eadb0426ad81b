"""Shared pytest fixtures for Halo Forge (loaded by the root conftest)."""
