"""merge bake / combine on the tiny Llama with LoRA adapters trained here for a few real steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from halo_common.errors import BadRequest
from halo_schemas.convert import MergeBakeSpec, MergeCombineSpec
from halo_serve.core.convert import bake, combine, read_manifest
from pydantic import ValidationError

TOL = 1e-5  # float32 logits: merged weights vs the adapter applied on the fly


def _train_adapter(base: Path, out: Path, seed: int, rank: int = 8, steps: int = 12) -> Path:
    """A LoRA adapter trained for a few steps on a seeded random token batch (a real update, ~1 s)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                             lora_dropout=0.0))
    ids = torch.randint(3, model.config.vocab_size, (4, 24))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": _train_adapter(tiny_model_dir, root / "a", seed=1),
        "b": _train_adapter(tiny_model_dir, root / "b", seed=2),
        "r4": _train_adapter(tiny_model_dir, root / "r4", seed=3, rank=4),
    }


IDS = torch.tensor([[5, 17, 99, 230, 41, 7, 300, 12]])


def _logits(model_dir: Path, adapter: Path | None = None) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    with torch.no_grad():
        return model.eval()(IDS).logits


def test_bake_equals_base_plus_adapter(tiny_model_dir: Path, adapters: dict[str, Path], tmp_path: Path) -> None:
    m = bake(MergeBakeSpec(adapter=str(adapters["a"]), out=str(tmp_path / "baked")))
    baked, ref, base = _logits(tmp_path / "baked"), _logits(tiny_model_dir, adapters["a"]), _logits(tiny_model_dir)
    diff = (baked - ref).abs().max().item()
    print(f"bake: max |baked - (base + adapter)| = {diff:.2e} (tolerance {TOL}); adapter moves logits by "
          f"{(ref - base).abs().max().item():.3f}")
    assert diff < TOL
    assert (ref - base).abs().max().item() > 100 * TOL  # the adapter really changes the model
    assert m.kind == "model" and m.format == "hf" and m.size_bytes > 0 and len(m.sha256) == 64
    assert str(adapters["a"]) in m.parents and str(tiny_model_dir) in m.parents
    assert read_manifest(tmp_path / "baked") == m
    assert (tmp_path / "baked" / "tokenizer.json").is_file()


def test_combine_linear_with_itself_is_the_adapter(tiny_model_dir: Path, adapters: dict[str, Path], tmp_path: Path) -> None:
    a = str(adapters["a"])
    m = combine(MergeCombineSpec(adapters=[a, a], weights=[0.5, 0.5], method="linear", out=str(tmp_path / "c")))
    assert m.kind == "adapter" and m.format == "peft"
    got, ref = _logits(tiny_model_dir, tmp_path / "c"), _logits(tiny_model_dir, adapters["a"])
    print(f"combine linear 0.5/0.5 of one adapter: max |Δlogits| = {(got - ref).abs().max().item():.2e}")
    assert torch.allclose(got, ref, atol=TOL)
    combine(MergeCombineSpec(adapters=[a, a], method="linear", bake=True, out=str(tmp_path / "cb")))  # uniform weights
    assert torch.allclose(_logits(tmp_path / "cb"), ref, atol=TOL)


@pytest.mark.parametrize("method", ["ties", "dare_linear", "dare_ties", "magnitude_prune"])
def test_combine_two_trained_adapters(method: str, tiny_model_dir: Path, adapters: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    spec = MergeCombineSpec(adapters=[str(adapters["a"]), str(adapters["b"])], method=method, density=0.5,
                            weights=[0.6, 0.4], bake=True, out=str(tmp_path / method), seed=0)
    m = combine(spec)
    assert m.kind == "model" and m.spec["method"] == method
    model = AutoModelForCausalLM.from_pretrained(tmp_path / method)
    out = model.generate(IDS, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert out.shape == (1, IDS.shape[1] + 8)
    logits = _logits(tmp_path / method)
    assert torch.isfinite(logits).all()
    assert (logits - _logits(tiny_model_dir)).abs().max().item() > 1e-3  # the merge changed the base


def test_combine_refuses_bad_input(adapters: dict[str, Path], tmp_path: Path) -> None:
    a, r4 = str(adapters["a"]), str(adapters["r4"])
    with pytest.raises(ValidationError, match="weights has 1 entries for 2 adapters"):
        MergeCombineSpec(adapters=[a, r4], weights=[1.0])
    with pytest.raises(BadRequest, match="different ranks") as e:
        combine(MergeCombineSpec(adapters=[a, r4], method="ties", out=str(tmp_path / "x")))
    assert e.value.param == "svd_rank"
    # With an SVD rank, mixed ranks combine.
    m = combine(MergeCombineSpec(adapters=[a, r4], method="ties", svd_rank=4, out=str(tmp_path / "y")))
    assert m.kind == "adapter"
    with pytest.raises(BadRequest, match="not a PEFT adapter"):
        combine(MergeCombineSpec(adapters=[a, str(tmp_path)], out=str(tmp_path / "z")))
