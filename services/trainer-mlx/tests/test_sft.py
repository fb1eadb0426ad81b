"""SFT on MLX end to end (tiny Llama, real training): run dir, events, summary, adapters in both formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from halo_schemas.jobs import JobState
from halo_schemas.training import TrainingSummary
from halo_trainer_mlx.core.runner import run_job
from halo_training.models import resolve_model_path


def _spec(data: Path, **kw: Any) -> dict[str, Any]:
    return {"model": "tiny://llama", "backend": "mlx", "data": {"train": str(data)}, "max_steps": 12,
            "batch_size": 4, "learning_rate": 3e-3, "max_length": 128, "checkpoint_every_steps": 5,
            "progress_interval_s": 0, **kw}


@pytest.mark.parametrize(("finetune", "packing", "grad_accum"), [("lora", True, 1), ("dora", False, 2),
                                                                  ("full", True, 1)])
def test_sft_trains_and_writes_the_run_dir(tmp_path: Path, chat_file: Path, recorder: Any, finetune: str,
                                           packing: bool, grad_accum: int) -> None:
    lr = 1e-3 if finetune == "full" else 3e-3
    summary = run_job("sft", _spec(chat_file, finetune=finetune, packing=packing, grad_accum=grad_accum,
                                   learning_rate=lr), tmp_path / "run", reporter=recorder)
    assert summary.state == JobState.SUCCEEDED, summary.failure_reason
    assert summary.service == "trainer-mlx" and summary.backend == "mlx" and summary.steps == 12
    assert summary.loss_last < summary.loss_first - 0.3 and summary.weights_updated
    assert summary.tokens > 0 and summary.tokens_per_second and summary.tokens_per_second > 0
    run = tmp_path / "run"
    on_disk = TrainingSummary.model_validate_json((run / "training_summary.json").read_text())
    assert on_disk.steps == 12 and on_disk.loss_last == summary.loss_last
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 13))
    assert all({"loss", "grad_norm", "learning_rate", "tokens", "memory_bytes"} <= set(r) for r in rows)
    replay = json.loads((run / "replay.json").read_text())
    assert replay["backend"] == "mlx" and replay["packages"]["mlx-lm"] != "absent"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-10", "checkpoint-5"]
    kinds = recorder.kinds()
    assert kinds[0] == "started" and kinds.count("checkpointed") == 2
    assert [e["step"] for k, e in recorder.events if k == "progress"][-1] == 12
    if finetune == "full":
        assert set(summary.outputs) == {"final"}
        assert (run / "final" / "config.json").exists() and (run / "final" / "model.safetensors").exists()
        assert summary.trainable_parameters == summary.total_parameters
    else:
        assert set(summary.outputs) == {"adapter", "adapter_mlx"}
        cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA" and cfg["use_dora"] == (finetune == "dora") and cfg["r"] == 16
        assert (run / "adapter" / "adapter_model.safetensors").exists()
        assert (run / "adapter_mlx" / "adapters.safetensors").exists()
        assert summary.trainable_parameters < summary.total_parameters
        assert [e["format"] for k, e in recorder.events if k == "artifact"] == ["peft", "mlx"]


@pytest.mark.parametrize("finetune", ["lora", "dora"])
def test_peft_adapter_gives_mlx_logits_in_transformers(tmp_path: Path, chat_file: Path, finetune: str) -> None:
    """The MLX-trained adapter, converted to PEFT and loaded with transformers + peft, gives the same next-token
    logits as MLX. Tolerance 1e-4 absolute in float32 (measured ~3e-7: the two only differ in summation order);
    the adapter moves logits by > 0.05, so a wrong transpose, scale or magnitude would fail by far."""
    import mlx.core as mx
    from halo_trainer_mlx.core.model import load_model
    from mlx_lm.tuner.utils import load_adapters

    torch = pytest.importorskip("torch")
    PeftModel = pytest.importorskip("peft").PeftModel
    from transformers import AutoModelForCausalLM

    summary = run_job("sft", _spec(chat_file, finetune=finetune, max_steps=8, lora={"dropout": 0.0}),
                      tmp_path / "run")
    assert summary.state == JobState.SUCCEEDED, summary.failure_reason
    base = resolve_model_path("tiny://llama")
    ids = [[5, 9, 33, 100, 7, 8, 2, 44, 61, 3]]
    mlx_model = load_model(base)
    load_adapters(mlx_model, summary.outputs["adapter_mlx"])
    mlx_model.eval()
    mlx_logits = np.array(mlx_model(mx.array(ids)))
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                           summary.outputs["adapter"]).eval()
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    with torch.no_grad():
        peft_logits = peft_model(torch.tensor(ids)).logits.numpy()
        base_logits = plain(torch.tensor(ids)).logits.numpy()
    assert np.abs(peft_logits - base_logits).max() > 0.05  # the adapter matters
    np.testing.assert_allclose(mlx_logits, peft_logits, atol=1e-4, rtol=0)


def test_peft_adapter_loads_back_into_mlx(tmp_path: Path, chat_file: Path) -> None:
    """A PEFT adapter (here the converted one) loads into an MLX model with the same outputs as mlx-lm's copy."""
    import mlx.core as mx
    from halo_trainer_mlx.core.model import load_model
    from halo_trainer_mlx.core.peft import load_peft_adapter
    from mlx_lm.tuner.utils import load_adapters

    summary = run_job("sft", _spec(chat_file, finetune="dora", max_steps=4), tmp_path / "run")
    base = resolve_model_path("tiny://llama")
    ids = mx.array([[5, 9, 33, 100, 7]])
    a = load_model(base)
    load_adapters(a, summary.outputs["adapter_mlx"])
    b = load_model(base)
    load_peft_adapter(b, Path(summary.outputs["adapter"]))
    a.eval()
    b.eval()
    np.testing.assert_allclose(np.array(a(ids)), np.array(b(ids)), atol=1e-5)
