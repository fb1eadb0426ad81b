"""Tests for the model catalog: validation, look-up and recommendations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from halo_models import catalog as cat
from halo_models.catalog import (
    BACKENDS,
    Catalog,
    InsufficientMemoryError,
    UnknownModelError,
    UnsupportedBackendError,
    estimate_memory_gb,
    find,
    load_catalog,
    recommend,
)
from pydantic import BaseModel, ValidationError


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def test_shipped_catalog_validates(catalog: Catalog) -> None:
    assert 15 <= len(catalog.models) <= 30
    ids = catalog.ids()
    assert len({i.lower() for i in ids}) == len(ids)
    for expected in ("Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-3.2-1B-Instruct", "google/gemma-2-2b-it"):
        assert expected in ids
    assert any(m.weights_format == "mlx" for m in catalog.models)


def test_every_entry_has_every_backend_note(catalog: Catalog) -> None:
    for entry in catalog.models:
        for backend in BACKENDS:
            note = entry.backends.get(backend)
            assert note.note.strip(), (entry.id, backend)
        assert any(entry.backends.get(b).supported for b in BACKENDS), entry.id
        if entry.weights_format == "hf":
            # Plain transformers checkpoints train on CUDA; anything else is a catalog mistake.
            assert entry.backends.cuda.supported, entry.id


def test_mlx_variants_match_their_base(catalog: Catalog) -> None:
    for entry in catalog.models:
        if entry.base_model is None:
            continue
        base = catalog.find(entry.base_model)
        for field in ("params_b", "hidden_size", "num_layers", "vocab_size", "context_length", "license"):
            assert getattr(entry, field) == getattr(base, field), (entry.id, field)


def test_defaults_are_plausible(catalog: Catalog) -> None:
    for entry in catalog.models:
        d = entry.defaults
        assert 1e-5 <= d.learning_rate <= 1e-3, entry.id
        assert d.lora_alpha >= d.lora_rank, entry.id
        assert d.max_seq_len <= entry.context_length, entry.id


@pytest.mark.parametrize(
    "model_cls",
    [cat.Catalog, cat.CatalogEntry, cat.BackendNotes, cat.BackendNote, cat.TrainingDefaults, cat.Recommendation],
)
def test_every_field_is_described_and_models_are_strict(model_cls: type[BaseModel]) -> None:
    for name, field in model_cls.model_fields.items():
        assert field.description, f"{model_cls.__name__}.{name} has no description"
    assert model_cls.model_config.get("extra") == "forbid"


def test_unknown_field_in_file_is_rejected_with_its_name(tmp_path: Path) -> None:
    data = json.loads(cat.catalog_path().read_text())
    data["models"][0]["paramz_b"] = 1.0
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValidationError, match="paramz_b"):
        load_catalog(path)


def test_missing_backend_note_is_rejected(tmp_path: Path) -> None:
    data = json.loads(cat.catalog_path().read_text())
    del data["models"][0]["backends"]["rocm"]
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValidationError, match="rocm"):
        load_catalog(path)


def test_duplicate_ids_are_rejected(catalog: Catalog) -> None:
    dup = catalog.models[0].model_copy(update={"id": catalog.models[0].id.upper()})
    with pytest.raises(ValidationError, match="duplicate"):
        Catalog(version=1, models=[*catalog.models, dup])


def test_catalog_round_trips_through_json(catalog: Catalog) -> None:
    assert Catalog.model_validate_json(catalog.model_dump_json()) == catalog


def test_find_exact_and_case_insensitive(catalog: Catalog) -> None:
    assert find("Qwen/Qwen2.5-1.5B-Instruct").params_b == pytest.approx(1.54)
    assert find("qwen/qwen2.5-1.5b-instruct").id == "Qwen/Qwen2.5-1.5B-Instruct"


def test_find_unknown_suggests_close_ids() -> None:
    with pytest.raises(UnknownModelError) as info:
        find("Qwen/Qwen2.5-1.5B-Instruc")
    message = str(info.value)
    assert "'Qwen/Qwen2.5-1.5B-Instruc'" in message and "Did you mean Qwen/Qwen2.5-1.5B-Instruct" in message
    assert isinstance(info.value, LookupError)
    with pytest.raises(UnknownModelError, match="models list"):
        find("nobody/nothing-at-all-like-it")


# --- recommend -------------------------------------------------------------------------------


def test_recommend_small_model_on_big_gpu() -> None:
    rec = recommend("Qwen/Qwen2.5-0.5B-Instruct", "cuda", memory_gb=24)
    entry = find("Qwen/Qwen2.5-0.5B-Instruct")
    assert rec.method == "lora"
    assert rec.dtype == "bfloat16"
    assert rec.lora_rank == entry.defaults.lora_rank
    assert rec.learning_rate == entry.defaults.learning_rate
    assert rec.max_seq_len == entry.defaults.max_seq_len
    assert rec.per_device_batch_size >= 2
    assert rec.per_device_batch_size * rec.gradient_accumulation_steps == cat.EFFECTIVE_BATCH_SIZE
    assert rec.estimated_memory_gb <= 24
    assert rec.notes[0].startswith("cuda:")


def test_recommend_switches_to_qlora_when_lora_does_not_fit() -> None:
    rec = recommend("Qwen/Qwen2.5-7B-Instruct", "cuda", memory_gb=12)
    assert rec.method == "qlora"
    assert rec.estimated_memory_gb <= 12
    assert any("QLoRA" in n for n in rec.notes)


def test_recommend_without_a_4bit_path_reports_insufficient_memory() -> None:
    # MPS has no bitsandbytes: a 7B model in bf16 cannot fit in 8 GB of unified memory.
    with pytest.raises(InsufficientMemoryError, match=r"does not fit in 8 GiB on mps"):
        recommend("mistralai/Mistral-7B-Instruct-v0.3", "mps", memory_gb=8)


def test_recommend_shortens_sequences_before_giving_up() -> None:
    rec = recommend("meta-llama/Llama-3.1-8B-Instruct", "cuda", memory_gb=8)
    assert rec.method == "qlora"
    assert rec.max_seq_len < 2048
    assert any("Sequence length reduced" in n for n in rec.notes)
    assert any("Gated" in n for n in rec.notes)


def test_recommend_cpu_uses_float32_and_refuses_7b() -> None:
    rec = recommend("HuggingFaceTB/SmolLM2-135M-Instruct", "cpu", memory_gb=16)
    assert rec.dtype == "float32" and rec.method == "lora"
    with pytest.raises(UnsupportedBackendError, match="cannot be finetuned on cpu"):
        recommend("Qwen/Qwen2.5-7B-Instruct", "cpu", memory_gb=256)


def test_recommend_mlx_weights_only_on_mlx() -> None:
    rec = recommend("mlx-community/Qwen2.5-7B-Instruct-4bit", "mlx", memory_gb=16)
    assert rec.method == "qlora"
    with pytest.raises(UnsupportedBackendError, match="MLX-format weights"):
        recommend("mlx-community/Qwen2.5-7B-Instruct-4bit", "cuda", memory_gb=80)


def test_more_memory_never_gives_a_smaller_batch() -> None:
    batches = [
        recommend("Qwen/Qwen2.5-1.5B-Instruct", "cuda", memory_gb=gb).per_device_batch_size
        for gb in (8, 12, 16, 24, 48, 80)
    ]
    assert batches == sorted(batches)


def test_recommend_rejects_bad_input() -> None:
    with pytest.raises(UnknownModelError, match="'acme/unknown-7b'"):
        recommend("acme/unknown-7b", "cuda", memory_gb=24)
    with pytest.raises(UnsupportedBackendError, match="unknown backend 'xpu'"):
        recommend("Qwen/Qwen2.5-0.5B-Instruct", "xpu", memory_gb=24)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="memory_gb must be positive"):
        recommend("Qwen/Qwen2.5-0.5B-Instruct", "cuda", memory_gb=0)


def test_every_supported_pair_gets_a_recommendation_with_ample_memory(catalog: Catalog) -> None:
    for entry in catalog.models:
        for backend in BACKENDS:
            if not entry.backends.get(backend).supported:
                continue
            rec = recommend(entry.id, backend, memory_gb=192)
            assert rec.estimated_memory_gb <= 192, (entry.id, backend)
            assert rec.max_seq_len == min(entry.defaults.max_seq_len, entry.context_length)


def test_estimate_grows_with_batch_and_sequence() -> None:
    entry = find("Qwen/Qwen2.5-1.5B-Instruct")

    def est(**kw: object) -> float:
        args = {"seq_len": 1024, "batch_size": 1, "gradient_checkpointing": True, **kw}
        return estimate_memory_gb(entry, "cuda", "lora", **args)  # type: ignore[arg-type]

    assert est(batch_size=2) > est()
    assert est(seq_len=2048) > est()
    assert est(gradient_checkpointing=False) > est()
    assert estimate_memory_gb(entry, "cuda", "qlora", seq_len=1024, batch_size=1, gradient_checkpointing=True) < est()


def test_importing_the_catalog_does_not_import_torch() -> None:
    # `halo-forge models list` must be instant: no torch/transformers import on this path.
    code = (
        "import sys, halo_models; halo_models.load_catalog();"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
