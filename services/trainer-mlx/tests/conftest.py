"""Fixtures for trainer-mlx tests: small chat datasets in tmp_path, and a recording reporter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from halo_training.reporting import Reporter

COLOURS = [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"), ("blood", "red"),
           ("sun", "yellow"), ("sea", "blue"), ("rose", "red"), ("leaf", "green"), ("cloud", "grey"),
           ("orange", "orange"), ("plum", "purple")]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def chat_file(tmp_path: Path) -> Path:
    """12 chat records ("What colour is the sky?" -> "The sky is blue."), learnable by the tiny model."""
    return write_jsonl(tmp_path / "colours.jsonl", [
        {"messages": [{"role": "user", "content": f"What colour is the {thing}?"},
                      {"role": "assistant", "content": f"The {thing} is {colour}."}]} for thing, colour in COLOURS
    ])


class Recorder(Reporter):
    """Keeps every event a recipe reports, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def started(self, *, total_steps: int | None, resumed_from_step: int | None, info: dict[str, Any]) -> None:
        self.events.append(("started", {"total_steps": total_steps, "resumed_from_step": resumed_from_step}))

    def progress(self, step: int, total_steps: int | None, metrics: dict[str, float]) -> None:
        self.events.append(("progress", {"step": step, **metrics}))

    def checkpointed(self, step: int, path: str) -> None:
        self.events.append(("checkpointed", {"step": step, "path": path}))

    def artifact(self, kind: str, fmt: str, path: str, step: int | None = None) -> None:
        self.events.append(("artifact", {"kind": kind, "format": fmt, "path": path}))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()
