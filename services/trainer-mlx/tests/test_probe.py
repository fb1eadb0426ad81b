"""The probe on MLX: a run stopped at a regression ends on its last passing checkpoint (or the base).

The eval service is played by a scripted judge (pass, then regress), as in trainer-torch's test_probe.py: what is
under test is what the trainer does with a verdict, and that the probed checkpoint holds weights the eval service
loads (a PEFT adapter naming its base). The real eval service judging real probe jobs is
tests/integration/test_eval_probe.py (trainer-torch; the probe bookkeeping is the shared halo_training.probe)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from halo_schemas.jobs import JobState
from halo_testing.probe import ScriptedJudge
from halo_trainer_mlx.core.runner import run_job
from halo_training import probe as probe_lib
from safetensors.numpy import load_file

TASK = "halo_arith_mc"


@pytest.fixture
def judge(monkeypatch: pytest.MonkeyPatch) -> Any:
    def use(regress_from: int) -> ScriptedJudge:
        j = ScriptedJudge(regress_from, TASK)
        monkeypatch.setattr(probe_lib, "bus_submitter", lambda reporter, timeout_s: j)
        return j
    return use


def _spec(data: Path, **kw: Any) -> dict[str, Any]:
    return {"model": "tiny://llama", "backend": "mlx", "data": {"train": str(data)}, "max_steps": 8,
            "batch_size": 4, "learning_rate": 1e-2, "max_length": 128, "checkpoint_every_steps": 2,
            "keep_checkpoints": 1, "progress_interval_s": 0, "lora": {"dropout": 0.0},
            "probe": {"every_n_steps": 2, "tasks": [TASK], "limit": 5, "on_regression": "stop"}, **kw}


def _adapter(path: Path) -> dict[str, np.ndarray]:
    return load_file(str(path / "adapter_model.safetensors"))


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_stopped_by_the_probe_the_run_ends_at_its_last_passing_checkpoint(judge: Any, chat_file: Path,
                                                                          tmp_path: Path) -> None:
    j = judge(regress_from=4)
    s = run_job("sft", _spec(chat_file), tmp_path / "run")
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    assert [job.step for job in j.jobs] == [0, 2, 4] and j.jobs[0].model == "tiny://llama"
    probe = s.extras["probe"]
    assert (s.steps, probe["stopped_at_step"], probe["last_good_step"]) == (4, 4, 2)
    assert [p["ok"] for p in probe["probes"]] == [True, False]
    ckpts = tmp_path / "run" / "checkpoints"
    good = Path(probe["last_good_checkpoint"])
    assert good == ckpts / "checkpoint-2"
    # keep_checkpoints=1, yet the last passing checkpoint survived the pruning at step 4.
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    # Each probed checkpoint is what the eval service loads: a PEFT adapter naming its base, with the tokenizer.
    assert json.loads((good / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny://llama"
    assert (good / "tokenizer_config.json").is_file()
    assert j.jobs[1].model == str(good) and j.jobs[2].model == str(ckpts / "checkpoint-4")
    exported = _adapter(Path(s.outputs["adapter"]))
    assert _same(exported, _adapter(good))  # the export is checkpoint 2, not the regressed step 4
    assert not _same(exported, _adapter(ckpts / "checkpoint-4"))
    lines = (tmp_path / "run" / "probe" / "probes.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4]


def test_with_no_passing_checkpoint_the_export_is_the_base(judge: Any, chat_file: Path, tmp_path: Path) -> None:
    judge(regress_from=2)
    s = run_job("sft", _spec(chat_file), tmp_path / "run")
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    assert (s.steps, s.extras["probe"]["last_good_checkpoint"]) == (2, None)
    exported = _adapter(Path(s.outputs["adapter"]))
    lora_b = [v for k, v in exported.items() if "lora_B" in k]
    assert lora_b and all(not v.any() for v in lora_b)  # every adapter is the identity: the base model
    assert not s.weights_updated
