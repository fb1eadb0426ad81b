"""The probe's verdicts turned into the run's result: a run stopped at a regression ends on the last model
that passed — SFT at its last passing checkpoint, RAFT at its last passing cycle's policy.

The eval service is played by a scripted judge here (pass, then regress), because what is under test is
what the trainer does with a verdict; the real eval service judging real probe jobs, stopping a run that
was made to regress, is tests/integration/test_eval_probe.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from halo_schemas.jobs import JobState
from halo_testing.probe import ScriptedJudge
from halo_trainer_torch.core.components import probe as probe_module
from halo_trainer_torch.core.runner import run_job
from safetensors.torch import load_file

from .test_raft import raft_spec, warm_model  # noqa: F401 - the module fixture is used below
from .test_recipes import _spec

PROBE_TASK = "halo_arith_mc"


@pytest.fixture
def judge(monkeypatch: pytest.MonkeyPatch) -> Any:
    def use(regress_from: int) -> ScriptedJudge:
        j = ScriptedJudge(regress_from, PROBE_TASK)
        monkeypatch.setattr(probe_module, "bus_submitter", lambda reporter, timeout_s: j)
        return j
    return use


def _weights(path: Path) -> dict[str, Any]:
    name = "adapter_model.safetensors" if (path / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(path / name)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_sft_stopped_by_the_probe_ends_at_its_last_passing_checkpoint(finetune: str, judge: Any, sft_file: Path,
                                                                     tmp_path: Path) -> None:
    j = judge(regress_from=4)
    probe = {"every_n_steps": 2, "tasks": [PROBE_TASK], "limit": 5, "on_regression": "stop"}
    s = run_job("sft", _spec(sft_file, finetune=finetune, max_steps=8, learning_rate=1e-2, checkpoint_every_steps=2,
                             probe=probe), tmp_path / "run")
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    assert [job.step for job in j.jobs] == [0, 2, 4] and j.jobs[0].model == "tiny://llama"
    summary = s.extras["probe"]
    assert (s.steps, summary["stopped_at_step"], summary["last_good_step"]) == (4, 4, 2)
    assert [p["ok"] for p in summary["probes"]] == [True, False]
    good = Path(summary["last_good_checkpoint"])
    assert good.name == "checkpoint-2" and good.is_dir()
    exported = Path(s.outputs["final" if finetune == "full" else "adapter"])
    assert _same(_weights(exported), _weights(good))  # the export is checkpoint 2, not the regressed step 4
    assert not _same(_weights(exported), _weights(tmp_path / "run" / "checkpoints" / "checkpoint-4"))


def test_raft_stopped_by_the_probe_ends_on_its_last_passing_cycle(judge: Any, warm_model: str,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    probe = {"every_cycle": True, "tasks": [PROBE_TASK], "limit": 5, "on_regression": "stop"}
    spec = raft_spec(warm_model, cycles=4, prompts_per_cycle=16, num_generations=4, eval_num_generations=2,
                     reward_threshold=0.0, probe=probe)
    # Cycle 1 passes; cycle 2 (its steps counted after cycle 1's) regresses.
    first = run_job("raft", {**spec, "cycles": 1, "probe": None}, tmp_path / "measure")
    j = judge(regress_from=first.steps + 1)
    s = run_job("raft", spec, tmp_path / "run")
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    summary = s.extras["probe"]
    assert [(p["cycle"], p["ok"]) for p in summary["probes"]] == [(1, True), (2, False)]
    assert summary["stopped_at_step"] == summary["probes"][1]["step"] == s.steps
    assert len(s.extras["cycles"]) == 2  # cycles 3 and 4 never ran
    assert [job.step for job in j.jobs][0] == 0 and j.jobs[0].model == warm_model
    good = Path(summary["last_good_checkpoint"])
    assert good == tmp_path / "run" / "cycles" / "1" / "model"
    assert _same(_weights(Path(s.outputs["final"])), _weights(good))
    assert not _same(_weights(Path(s.outputs["final"])), _weights(tmp_path / "run" / "cycles" / "2" / "model"))


def test_raft_probe_needs_every_cycle() -> None:
    from halo_schemas.rl import RAFTSpec
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="RAFT probes each cycle's policy; set probe.every_cycle"):
        RAFTSpec.model_validate({"model": "tiny://llama", "data": {"train": "x.jsonl"},
                                 "verifiers": [{"name": "regex_format", "params": {"patterns": ["a"]}}],
                                 "probe": {"every_n_steps": 2}})
