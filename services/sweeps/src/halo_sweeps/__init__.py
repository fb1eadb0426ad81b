"""Halo Forge sweeps: Optuna sweeps over any training spec"""

__version__ = "0.1.0"
