"""Fixtures for trainer-torch tests: small datasets written to tmp_path, and a tiny model copy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

# The tiny model's ops are microseconds long: with several threads, synchronisation (and any other process on
# a 2-core machine) dominates. One thread is several times faster here; real runs keep torch's default.
torch.set_num_threads(1)

ANIMALS = [("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("sheep", "baa"), ("pig", "oink"),
           ("horse", "neigh"), ("lion", "roar"), ("owl", "hoot"), ("frog", "ribbit"), ("bee", "buzz"), ("snake", "hiss")]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def sft_file(tmp_path: Path) -> Path:
    """Chat records: 12 animal-sound questions (learnable by the tiny model in a few dozen steps)."""
    return write_jsonl(tmp_path / "sft.jsonl", [
        {"messages": [{"role": "user", "content": f"What does a {a} say?"},
                      {"role": "assistant", "content": f"A {a} says {s}."}]} for a, s in ANIMALS
    ])


def preference_rows(topics: list[str], rejected: str = "No.") -> list[dict[str, Any]]:
    """Separable pairs: the chosen answer is a polite yes, the rejected a curt refusal (``{t}`` = topic)."""
    return [{"prompt": [{"role": "user", "content": f"Tell me about the {t}."}],
             "chosen": [{"role": "assistant", "content": f"Sure, the {t} is lovely."}],
             "rejected": [{"role": "assistant", "content": rejected.format(t=t)}]} for t in topics]


TOPICS = ["cow", "dog", "cat", "duck", "sheep", "pig", "horse", "lion", "owl", "frog", "bee", "snake",
          "river", "mountain", "forest", "ocean", "desert", "city", "garden", "bridge"]
HELD_OUT = ["castle", "island", "valley", "meadow", "harbor", "canyon", "glacier", "village"]


@pytest.fixture
def pref_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "prefs.jsonl", preference_rows(TOPICS))


@pytest.fixture
def twin_pref_file(tmp_path: Path) -> Path:
    """Pairs that differ in one word ("lovely" vs "awful"): no length bias, so reference-free DPO starts
    from the base model's arbitrary ordering rather than from "shorter is likelier"."""
    return write_jsonl(tmp_path / "twins.jsonl", preference_rows(TOPICS, rejected="Sure, the {t} is awful."))


@pytest.fixture
def heldout_pref_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "prefs_heldout.jsonl", preference_rows(HELD_OUT))
