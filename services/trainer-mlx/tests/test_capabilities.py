"""Fields MLX cannot honour are refused before anything is read or loaded, naming capability and backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from halo_schemas.jobs import JobState
from halo_trainer_mlx.core.runner import run_job


def _spec(data: Path, **kw: Any) -> dict[str, Any]:
    return {"model": "tiny://llama", "backend": "mlx", "data": {"train": str(data)}, "max_steps": 2, **kw}


@pytest.mark.parametrize(("method", "fields", "words"), [
    ("sft", {"finetune": "rslora"}, ["rsLoRA", "mlx", "finetune"]),
    ("sft", {"finetune": "pissa"}, ["PiSSA", "mlx"]),
    ("sft", {"finetune": "qlora"}, ["QLoRA", "bitsandbytes", "mlx"]),
    ("sft", {"num_processes": 2, "distributed": "fsdp"}, ["FSDP", "mlx", "num_processes"]),
    ("sft", {"attn_implementation": "flash_attention_2"}, ["flash-attention", "mlx"]),
    ("sft", {"lora": {"modules_to_save": ["lm_head"]}}, ["modules_to_save", "mlx"]),
    ("sft", {"trust_remote_code": True}, ["trust_remote_code", "mlx"]),
    ("raft", {"probe": {"every_cycle": True}}, ["probe", "RAFT", "mlx", "backend=torch"]),
    ("rm", {"probe": {"every_n_steps": 2}}, ["probe", "reward model", "mlx"]),
    ("sft", {"checkpoint_every_steps": 4, "probe": {"every_n_steps": 6}}, ["probe.every_n_steps (6)", "multiple"]),
    ("grpo", {"loss_type": "sapo"}, ["loss_type='sapo'", "mlx", "backend=torch"]),
    ("grpo", {"generation": "trl"}, ["generation='trl'", "mlx"]),
    ("grpo", {"gradient_checkpointing": True}, ["gradient_checkpointing=True", "mlx"]),
])
def test_unsupported_fields_are_refused_before_loading(tmp_path: Path, method: str, fields: dict[str, Any],
                                                       words: list[str]) -> None:
    # The data file does not exist: the refusal must come before the data (and the model) is read.
    missing = tmp_path / "never-read.jsonl"
    spec = _spec(missing, **fields)
    if method in ("grpo", "raft"):
        spec = {"model": "tiny://llama", "backend": "mlx", "data": {"train": str(missing)},
                "verifiers": [{"name": "exact_match"}], **fields}
    summary = run_job(method, spec, tmp_path / "run")
    assert summary.state == JobState.FAILED
    assert summary.service == "trainer-mlx"
    for word in words:
        assert word in (summary.failure_reason or ""), summary.failure_reason
    assert not (tmp_path / "run" / "replay.json").exists()  # written only once preflight passed
    assert (tmp_path / "run" / "training_summary.json").exists()


def test_bad_spec_names_the_field(tmp_path: Path, chat_file: Path) -> None:
    summary = run_job("sft", _spec(chat_file, lerning_rate=1.0), tmp_path / "run")
    assert summary.state == JobState.FAILED and "lerning_rate" in (summary.failure_reason or "")
