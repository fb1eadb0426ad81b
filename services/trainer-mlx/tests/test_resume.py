"""Durable runs without a bus: preempted mid-run, resumed from the checkpoint, the run ends where an uninterrupted
one does (same metrics row per step, no duplicates); cancel stops with state cancelled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from halo_schemas.jobs import JobState
from halo_trainer_mlx.core.runner import run_job
from halo_training.reporting import JobControl, Reporter
from halo_training.runs import Preempted


class StopAt(Reporter):
    """Requests a stop (preempt or cancel) once ``step`` was reported."""

    def __init__(self, control: JobControl, step: int, how: str) -> None:
        self.control, self.step, self.how = control, step, how

    def progress(self, step: int, total_steps: int | None, metrics: dict[str, float]) -> None:
        if step >= self.step:
            getattr(self.control, self.how)()


def _spec(data: Path, **kw: Any) -> dict[str, Any]:
    return {"model": "tiny://llama", "backend": "mlx", "data": {"train": str(data)}, "max_steps": 10,
            "batch_size": 4, "learning_rate": 3e-3, "max_length": 128, "checkpoint_every_steps": 4,
            "progress_interval_s": 0, "lora": {"dropout": 0.0}, **kw}


def _rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_preempted_run_resumes_to_the_same_result(tmp_path: Path, chat_file: Path) -> None:
    straight = run_job("sft", _spec(chat_file), tmp_path / "straight")
    control = JobControl()
    with pytest.raises(Preempted):
        run_job("sft", _spec(chat_file), tmp_path / "resumed", control=control, reporter=StopAt(control, 6, "preempt"))
    ckpts = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-4", "checkpoint-6"]  # the periodic one and one right where it stopped
    resumed = run_job("sft", _spec(chat_file), tmp_path / "resumed", attempt=2)
    assert resumed.state == JobState.SUCCEEDED and resumed.resumed_from_step == 6 and resumed.attempts == 2
    assert resumed.steps == straight.steps == 10
    a, b = _rows(tmp_path / "straight"), _rows(tmp_path / "resumed")
    assert [r["step"] for r in b] == list(range(1, 11))  # no step twice
    for x, y in zip(a, b, strict=True):
        assert abs(x["loss"] - y["loss"]) < 1e-5, (x["step"], x["loss"], y["loss"])
    assert resumed.tokens == straight.tokens


def test_cancel_stops_the_run(tmp_path: Path, chat_file: Path) -> None:
    control = JobControl()
    summary = run_job("sft", _spec(chat_file, max_steps=50), tmp_path / "run", control=control,
                      reporter=StopAt(control, 3, "cancel"))
    assert summary.state == JobState.CANCELLED and summary.steps == 3
    assert not (tmp_path / "run" / "adapter").exists()
