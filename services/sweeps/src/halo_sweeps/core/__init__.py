"""sweeps's logic: plain functions and classes, tested without NATS or HTTP (tests/test_core.py)."""
