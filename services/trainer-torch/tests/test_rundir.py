"""Run-directory bookkeeping survives interruption at any point."""

from __future__ import annotations

import json
from pathlib import Path

from halo_trainer_torch.core.components.rundir import RunDir, write_json_atomic


def _fake_checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"x" * 10)
    if complete:
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return d


def test_atomic_json_leaves_no_temp_files(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    write_json_atomic(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_metrics_rewind_drops_torn_and_future_lines(tmp_path: Path) -> None:
    run = RunDir(tmp_path).ensure()
    for step in range(1, 6):
        run.append_metrics({"step": step, "loss": 1.0 / step})
    with run.metrics_jsonl.open("a") as f:
        f.write('{"step": 6, "lo')  # killed mid-write
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3, 4, 5]
    run.rewind_metrics(3)
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3]
    assert run.metrics_jsonl.read_text().endswith("\n")


def test_checkpoints_finalize_prune_and_ignore_partial(tmp_path: Path) -> None:
    run = RunDir(tmp_path).ensure()
    for step in (2, 4, 6):
        run.finalize_checkpoint(_fake_checkpoint(run.staging, step))
    _fake_checkpoint(run.checkpoints, 8, complete=False)  # half-copied: no trainer_state.json
    assert run.checkpoint_steps() == [2, 4, 6]
    assert run.latest_checkpoint() == run.checkpoints / "checkpoint-6"
    run.prune_checkpoints(2)
    assert run.checkpoint_steps() == [4, 6]
    # A re-save of an existing step replaces it whole.
    run.finalize_checkpoint(_fake_checkpoint(run.staging, 6))
    assert run.checkpoint_steps() == [4, 6]


def test_clean_partial_removes_leftovers_only(tmp_path: Path) -> None:
    run = RunDir(tmp_path).ensure()
    run.finalize_checkpoint(_fake_checkpoint(run.staging, 2))
    _fake_checkpoint(run.staging, 4)  # the Trainer was writing this one when the process died
    _fake_checkpoint(run.checkpoints, 6, complete=False)
    (run.root / "adapter.tmp").mkdir()
    (run.root / ".spec.json.tmp-123").write_text("{")
    run.write_json("spec.json", {"ok": True})
    run.clean_partial()
    assert run.checkpoint_steps() == [2]
    assert not run.staging.exists() and not (run.checkpoints / "checkpoint-6").exists()
    assert sorted(p.name for p in run.root.iterdir()) == ["checkpoints", "logs", "spec.json"]
