"""``halo-forge models recommend`` prints training-spec keys: the YAML it prints is a valid SFT spec, and the
trainer resolves it to exactly the recommended values; the "trainer default" column is what trainer-torch
itself resolves for a spec that leaves the keys out."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from halo_common.backend import Backend
from halo_forge.main import app
from halo_models.catalog import recommend, trainer_defaults
from halo_schemas.training import SFTSpec
from halo_trainer_torch.core.components.model import resolve_settings
from typer.testing import CliRunner

runner = CliRunner()


def printed_spec(output: str) -> dict[str, Any]:
    """The YAML block after 'paste into the spec (YAML):' (up to the notes)."""
    lines = output.split("paste into the spec (YAML):\n", 1)[1].splitlines()
    block = [ln for ln in lines[: next((i for i, ln in enumerate(lines) if ln.startswith("  •")), len(lines))]]
    return yaml.safe_load("\n".join(block))


@pytest.mark.parametrize(("model_id", "backend", "memory_gb"), [
    ("Qwen/Qwen2.5-7B-Instruct", "cuda", "12"),         # qlora, batch 1, checkpointing
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "cpu", "16"),
    ("Qwen/Qwen2.5-0.5B-Instruct", "rocm", "64"),
])
def test_recommend_prints_spec_keys_the_trainer_resolves_to_the_recommended_values(
        model_id: str, backend: str, memory_gb: str) -> None:
    result = runner.invoke(app, ["models", "recommend", model_id, "--backend", backend, "--memory-gb", memory_gb],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rec = recommend(model_id, backend, float(memory_gb))  # type: ignore[arg-type]
    pasted = printed_spec(result.output)
    assert pasted == {"model": model_id, **rec.spec()}
    for key in ("finetune", "lora.rank", "lora.alpha", "learning_rate", "max_length", "batch_size", "grad_accum",
                "gradient_checkpointing", "dtype"):
        assert f"│ {key} " in result.output, key
    # Unknown keys would be a 400 here (UserInput forbids extras), so these are real spec keys.
    spec = SFTSpec.model_validate({**pasted, "data": {"train": "chat.jsonl"}})
    assert spec.finetune == rec.method and spec.lora.rank == rec.lora_rank and spec.lora.alpha == rec.lora_alpha
    assert (spec.max_length, spec.batch_size, spec.grad_accum) == (
        rec.max_seq_len, rec.per_device_batch_size, rec.gradient_accumulation_steps)
    if rec.method == "qlora" and backend == "cuda":
        spec = spec.model_copy(update={"finetune": "lora"})  # 4-bit needs bitsandbytes on a GPU, not checked here
    resolved = resolve_settings(spec, Backend(backend))
    assert resolved.learning_rate == rec.learning_rate
    assert resolved.gradient_checkpointing == rec.gradient_checkpointing


@pytest.mark.parametrize("backend", ["cpu", "cuda", "rocm", "mps"])
@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_trainer_defaults_are_what_trainer_torch_resolves_for_a_spec_without_the_keys(
        backend: str, finetune: str) -> None:
    spec = SFTSpec.model_validate({"model": "org/model", "data": {"train": "chat.jsonl"}, "finetune": finetune})
    resolved = resolve_settings(spec, Backend(backend))
    d = trainer_defaults(backend, finetune=finetune, lora_rank=spec.lora.rank)  # type: ignore[arg-type]
    assert d["learning_rate"] == resolved.learning_rate
    assert d["gradient_checkpointing"] == resolved.gradient_checkpointing
    assert (d["finetune"], d["lora"]["rank"], d["max_length"], d["batch_size"], d["grad_accum"]) == (
        SFTSpec.model_fields["finetune"].default, spec.lora.rank, spec.max_length, spec.batch_size, spec.grad_accum)
    assert spec.lora.alpha is None and d["lora"]["alpha"] == 2 * spec.lora.rank  # the trainer's alpha = 2 x rank


def test_recommend_names_the_field_of_bad_input() -> None:
    result = runner.invoke(app, ["models", "recommend", "Qwen/Qwen2.5-7B-Instruct", "--backend", "cpu",
                                 "--memory-gb", "256"])
    assert result.exit_code != 0
    assert getattr(result.exception, "code", None) == 422 and getattr(result.exception, "param", None) == "backend"
