"""num_processes > 1 hands the job to ``accelerate launch`` (config generated from the spec): two gloo
processes on CPU train one data-parallel job, report through rank 0, and stop together on cancel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from halo_schemas.jobs import JobState
from halo_trainer_torch.core.components.hooks import JobControl, Reporter
from halo_trainer_torch.core.runner import run_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORDS = [{"messages": [{"role": "user", "content": f"What does a {a} say?"},
                         {"role": "assistant", "content": f"A {a} says {s}."}]}
           for a, s in [("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("owl", "hoot"),
                        ("frog", "ribbit"), ("bee", "buzz"), ("lion", "roar")]]


class Collect(Reporter):
    def __init__(self, control: JobControl | None = None, cancel_at: int | None = None) -> None:
        self.events: list[tuple[str, Any]] = []
        self.control, self.cancel_at = control, cancel_at

    def started(self, *, total_steps: int | None, resumed_from_step: int | None, info: dict[str, Any]) -> None:
        self.events.append(("started", total_steps))

    def progress(self, step: int, total_steps: int | None, metrics: dict[str, float]) -> None:
        self.events.append(("progress", step))
        if self.control is not None and self.cancel_at is not None and step >= self.cancel_at:
            self.control.cancel()

    def checkpointed(self, step: int, path: str) -> None:
        self.events.append(("checkpointed", step))

    def artifact(self, kind: str, fmt: str, path: str, step: int | None = None) -> None:
        self.events.append(("artifact", kind))


def _spec(data: Path, **kw: Any) -> dict[str, Any]:
    return {"model": "tiny://llama", "data": {"train": str(data)}, "finetune": "lora", "batch_size": 2,
            "max_length": 64, "packing": False, "progress_interval_s": 0, "learning_rate": 1e-2, **kw}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def test_two_gloo_processes_train_one_job(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    single = run_job("sft", _spec(data, max_steps=4, checkpoint_every_steps=2), tmp_path / "one")
    reporter = Collect()
    s = run_job("sft", _spec(data, max_steps=4, checkpoint_every_steps=2, num_processes=2), tmp_path / "two",
                reporter=reporter)
    log = (tmp_path / "two" / "logs" / "launch.log").read_text()
    assert s.state == JobState.SUCCEEDED, s.failure_reason or log[-3000:]
    assert s.steps == 4 and s.weights_updated
    cfg = yaml.safe_load((tmp_path / "two" / "logs" / "accelerate_config.yaml").read_text())
    assert cfg["num_processes"] == 2 and cfg["distributed_type"] == "MULTI_GPU"
    # Each optimizer step consumed a batch on each of the two ranks: about twice the tokens of one process.
    assert 1.6 < s.tokens / single.tokens < 2.4, (s.tokens, single.tokens)
    kinds = [k for k, _ in reporter.events]
    assert kinds[0] == "started" and kinds.count("checkpointed") == 2 and ("artifact", "adapter") in reporter.events
    assert [v for k, v in reporter.events if k == "progress"] == [1, 2, 3, 4]
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").exists()
    rows = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # rank 0 alone writes metrics


def test_cancel_reaches_every_rank(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    control = JobControl()
    s = run_job("sft", _spec(data, max_steps=400, checkpoint_every_steps=1000, num_processes=2), tmp_path / "run",
                reporter=Collect(control, cancel_at=2), control=control)
    log = (tmp_path / "run" / "logs" / "launch.log").read_text()
    assert s.state == JobState.CANCELLED, s.failure_reason or log[-3000:]
    assert 2 <= s.steps < 400
