"""Bradley-Terry reward model on MLX: learns to rank chosen over rejected, and its export loads in transformers
(``AutoModelForSequenceClassification``, PEFT for the adapter) giving the rewards MLX computed (float32, 1e-4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from halo_schemas.jobs import JobState
from halo_trainer_mlx.core.runner import run_job
from halo_training.models import resolve_model_path

TOPICS = ["river", "mountain", "forest", "ocean", "desert", "city", "garden", "bridge"]


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_reward_model_ranks_and_exports_for_transformers(tmp_path: Path, finetune: str) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = [{"prompt": f"Describe the {t}.", "chosen": f" The {t} is lovely.", "rejected": f" The {t} is awful."}
            for t in TOPICS]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"model": "tiny://llama", "backend": "mlx", "data": {"train": str(data)}, "finetune": finetune,
            "max_steps": 20, "batch_size": 4, "learning_rate": 1e-2 if finetune == "lora" else 3e-3,
            "max_length": 64, "lora": {"dropout": 0.0}, "checkpoint_every_steps": 100}
    summary = run_job("rm", spec, tmp_path / "run")
    assert summary.state == JobState.SUCCEEDED, summary.failure_reason
    assert summary.extras["train_pairwise_accuracy"] == 1.0
    out = Path(summary.outputs["adapter" if finetune == "lora" else "final"])
    manifest = json.loads((out / "verifier.json").read_text())
    assert manifest["kind"] == "reward-model" and manifest["normalization"]["pairwise_accuracy"] == 1.0

    base = resolve_model_path("tiny://llama")
    if finetune == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(
            AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32), str(out))
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(out), dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    text = [f"Describe the {t}. The {t} is {w}." for t in TOPICS[:2] for w in ("lovely", "awful")]
    ids = [tok(t)["input_ids"] for t in text]
    model.config.pad_token_id = tok.pad_token_id
    with torch.no_grad():
        hf = [float(model(input_ids=torch.tensor([i])).logits[0, 0]) for i in ids]

    import mlx.core as mx
    from halo_trainer_mlx.core.recipes.rm import Batch, rewards

    assert hf[0] > hf[1] and hf[2] > hf[3]  # transformers ranks as trained
    if finetune == "full":  # the same folder read back into MLX gives the same rewards as transformers
        import mlx.nn as nn
        from mlx_lm.utils import load_model as mlx_load_model
        from safetensors.numpy import load_file

        mlx_model, _ = mlx_load_model(out, strict=False)  # the head is ours, not mlx-lm's

        mlx_model.score = nn.Linear(mlx_model.model.embed_tokens.weight.shape[1], 1, bias=False)
        mlx_model.score.weight = mx.array(load_file(str(out / "model.safetensors"))["score.weight"])
        got = [float(rewards(mlx_model, Batch({"ids": mx.array([i]), "last": mx.array([len(i) - 1])}, 0, 0))[0])
               for i in ids]
        np.testing.assert_allclose(got, hf, atol=1e-4)
