"""Halo Forge eval service: lm-evaluation-harness jobs, probes and pass@k (see docs/eval.md)."""

__version__ = "0.1.0"
