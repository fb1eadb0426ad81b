"""DPO (every loss type) and ORPO on MLX against trainer-torch: same tiny Llama, same pairs, seed, float32, full
finetuning with the initial weights as the reference; every step sees all pairs (batch_size = pairs), so the
trainers' different shuffles cannot matter. Per-step loss and reward margin must agree within
``1e-3 * max(1, |value|)`` (measured: <= 2e-5 relative): float32 summation-order drift over the steps, far below
what a wrong formula, reference or sign would cause."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

TOPICS = ["cow", "dog", "cat", "duck", "sheep", "pig", "horse", "lion"]
STEPS = 10
pytestmark = pytest.mark.slow  # seven runs of both trainers: ~100 s on 2 cores


def _pairs(path: Path) -> Path:
    rows = [{"prompt": [{"role": "user", "content": f"Tell me about the {t}."}],
             "chosen": [{"role": "assistant", "content": f"Sure, the {t} is lovely."}],
             "rejected": [{"role": "assistant", "content": f"Sure, the {t} is awful."}]} for t in TOPICS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _series(run: Path, key: str) -> list[float]:
    return [r[key] for r in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()) if key in r]


@pytest.mark.parametrize(("method", "extra"), [
    ("dpo", {"loss_type": "sigmoid"}), ("dpo", {"loss_type": "ipo"}), ("dpo", {"loss_type": "hinge"}),
    ("dpo", {"loss_type": "kto_pair"}), ("dpo", {"loss_type": "rpo", "rpo_alpha": 0.5}),
    ("dpo", {"loss_type": "cdpo", "label_smoothing": 0.1}), ("orpo", {}),
])
def test_preference_steps_match_trainer_torch(tmp_path: Path, method: str, extra: dict[str, Any]) -> None:
    torch = pytest.importorskip("torch")
    from halo_trainer_mlx.core.runner import run_job as mlx_run
    from halo_trainer_torch.core.runner import run_job as torch_run

    torch.set_num_threads(1)
    spec = {"model": "tiny://llama", "data": {"train": str(_pairs(tmp_path / "pairs.jsonl"))}, "finetune": "full",
            "max_steps": STEPS, "batch_size": len(TOPICS), "learning_rate": 1e-3, "dtype": "float32",
            "max_length": 128, "checkpoint_every_steps": 100, "seed": 7, **extra}
    t = torch_run(method, {**spec, "backend": "torch"}, tmp_path / "torch")
    m = mlx_run(method, {**spec, "backend": "mlx"}, tmp_path / "mlx")
    assert t.state == m.state == "succeeded", (t.failure_reason, m.failure_reason)
    for key in ("loss", "reward_margin", "reward_accuracy"):
        a, b = _series(tmp_path / "torch", key), _series(tmp_path / "mlx", key)
        assert len(a) == len(b) == STEPS, key
        for step, (x, y) in enumerate(zip(a, b, strict=True), start=1):
            assert abs(x - y) <= 1e-3 * max(1.0, abs(x)), f"{key} at step {step}: torch {x} vs mlx {y}"
    assert _series(tmp_path / "mlx", "reward_margin")[-1] > 0  # the preference was learned
