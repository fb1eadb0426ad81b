"""Per-backend resolution of the spec's auto values, and refusals of what a backend cannot do."""

from __future__ import annotations

import pytest
from halo_common.backend import Backend
from halo_common.errors import Unprocessable
from halo_schemas.training import DataSpec, SFTSpec
from halo_trainer_torch.core.components import model as model_mod
from halo_trainer_torch.core.components.model import resolve_settings


def _spec(**kw: object) -> SFTSpec:
    return SFTSpec(model="org/some-model", data=DataSpec(train="x.jsonl"), **kw)  # type: ignore[arg-type]


def test_cpu_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_mod, "cpu_has_native_bf16", lambda: False)
    r = resolve_settings(_spec(), Backend.CPU)
    assert (r.dtype, r.load_dtype, r.attn_implementation, r.gradient_checkpointing, r.use_cpu) == (
        "float32", "float32", "sdpa", False, True)
    assert r.learning_rate == 2e-4 and resolve_settings(_spec(finetune="full"), Backend.CPU).learning_rate == 2e-5
    assert resolve_settings(_spec(learning_rate=1e-3), Backend.CPU).learning_rate == 1e-3
    assert r.model_path == "org/some-model"


def test_cpu_with_native_bf16_autocasts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_mod, "cpu_has_native_bf16", lambda: True)
    r = resolve_settings(_spec(finetune="full"), Backend.CPU)
    assert r.dtype == "bfloat16" and r.bf16 and r.load_dtype == "float32"  # float32 master weights, bf16 compute
    assert resolve_settings(_spec(), Backend.CPU).load_dtype == "bfloat16"  # adapters: the frozen base in bf16


def test_gpu_backends_checkpoint_activations_by_default() -> None:
    r = resolve_settings(_spec(), Backend.CUDA)
    assert r.gradient_checkpointing and not r.use_cpu and r.dtype in ("bfloat16", "float16")
    assert not resolve_settings(_spec(gradient_checkpointing=False), Backend.CUDA).gradient_checkpointing


@pytest.mark.parametrize(("kw", "message"), [
    ({"finetune": "qlora"}, "four_bit is not supported on backend 'cpu'"),
    ({"dtype": "float16"}, "fp16 is not supported on backend 'cpu'"),
    ({"attn_implementation": "flash_attention_2"}, "flash_attn is not supported on backend 'cpu'"),
])
def test_unsupported_options_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(Unprocessable, match=message):
        resolve_settings(_spec(**kw), Backend.CPU)


def test_trainer_torch_refuses_mlx() -> None:
    with pytest.raises(Unprocessable, match="use trainer-mlx"):
        resolve_settings(_spec(), Backend.MLX)
