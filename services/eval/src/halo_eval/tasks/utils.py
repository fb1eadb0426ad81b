"""Data loaders of the built-in offline suite (referenced by the YAMLs as ``custom_dataset: !function``).

The JSONL files sit next to this module (``data/``), so the suite runs from any working directory,
through halo-forge or lm-eval's own CLI (``lm_eval --include_path <this dir> --tasks halo_offline``),
without a hub. Regenerate the data with ``services/eval/scripts/make_offline_suite.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

DATA = Path(__file__).resolve().parent / "data"


def _load(name: str) -> datasets.DatasetDict:
    rows = [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def arith_mc(**_: object) -> datasets.DatasetDict:
    return _load("arith_mc")


def arith_gen(**_: object) -> datasets.DatasetDict:
    return _load("arith_gen")


def compare_mc(**_: object) -> datasets.DatasetDict:
    return _load("compare_mc")


def code_output(**_: object) -> datasets.DatasetDict:
    return _load("code_output")


def animals_mc(**_: object) -> datasets.DatasetDict:
    return _load("animals_mc")
