"""convert: round trip of every (format, quant) this host supports on the tiny Llama and Qwen2,
and the verify rejecting broken exports (swapped GGUF tensors, another tokenizer, a zeroed MLX layer).

GGUF cases need llama-cpp-python, which ``scripts/dev setup`` builds and installs; where it is
missing they are skipped with a loud reason (never silently)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
from halo_common.errors import BadRequest
from halo_models.tiny import make_tiny_cached
from halo_schemas.convert import SUPPORTED_QUANTS, ConvertSpec
from halo_serve.core.convert import convert, format_report, read_manifest, supported_matrix, verify_export
from halo_serve.core.convert.common import check_pair, tree_sha256
from halo_serve.core.convert.exporters import export_gguf, export_hf, export_mlx
from halo_serve.core.convert.testing import confident_copy, replace_tokenizer, swap_gguf_tensors, zero_mlx_layer
from pydantic import ValidationError

PROMPTS = ["The quick brown fox jumps over the lazy dog.", "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n",
           "1, 2, 3, 4, 5, 6,"]
MATRIX = supported_matrix()


def _need(fmt: str) -> None:
    why = MATRIX[fmt]["fp32"]
    if why:
        msg = f"SKIPPING {fmt} convert tests: {why}"
        warnings.warn(msg, stacklevel=2)
        print("\n" + "!" * 8 + " " + msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def sources(tiny_model_dir: Path, tiny_qwen2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("src")
    return {"llama": confident_copy(tiny_model_dir, root / "llama"), "qwen2": confident_copy(tiny_qwen2_dir, root / "qwen2")}


CASES = [(arch, fmt, q) for arch in ("llama", "qwen2") for fmt, qs in SUPPORTED_QUANTS.items() for q in qs]


@pytest.mark.parametrize(("arch", "fmt", "quant"), CASES, ids=[f"{a}-{f}-{q}" for a, f, q in CASES])
def test_round_trip(arch: str, fmt: str, quant: str, sources: dict[str, Path], tmp_path: Path) -> None:
    _need(fmt)
    out = tmp_path / ("model.gguf" if fmt == "gguf" else "out")
    m = convert(ConvertSpec(source=str(sources[arch]), format=fmt, quant=quant, out=str(out), prompts=PROMPTS,
                            max_new_tokens=8))
    print(f"\n{arch} {fmt} {quant}: {m.size_bytes} bytes, export {m.seconds:.1f}s; {format_report(m.verify)}")
    assert m.status == "verified", format_report(m.verify)
    assert m.verify.tokenizer_agreement == 1.0
    assert (m.sha256, m.size_bytes) == tree_sha256(out)
    assert read_manifest(out) == m
    assert m.parents == [str(sources[arch].resolve())]


def test_unsupported_pairs_are_refused_naming_the_choices() -> None:
    with pytest.raises(ValidationError, match="choose one of fp32, fp16, bf16"):
        ConvertSpec(source="x", format="hf", quant="q4")
    with pytest.raises(BadRequest, match="choose one of fp32, fp16, bf16") as e:
        check_pair("hf", "q8")
    assert e.value.param == "quant"
    with pytest.raises(BadRequest, match="choose one of hf, gguf, mlx"):
        check_pair("onnx", "fp16")


def test_verify_catches_a_different_tokenizer(sources: dict[str, Path], tmp_path: Path) -> None:
    out = export_hf(sources["llama"], tmp_path / "hf", "fp32")
    other = make_tiny_cached(arch="llama", vocab_size=400)  # trained with fewer merges: different ids
    replace_tokenizer(out, other)
    r = verify_export(sources["llama"], out, "hf", "fp32", PROMPTS, 8)
    print("\nother tokenizer:", format_report(r))
    assert not r.passed and r.tokenizer_agreement < 1.0 and any("tokenizer" in f for f in r.failures)


def test_verify_catches_a_zeroed_mlx_layer(sources: dict[str, Path], tmp_path: Path) -> None:
    _need("mlx")
    for quant in ("fp16", "q4"):
        out = export_mlx(sources["qwen2"], tmp_path / quant, quant)
        zero_mlx_layer(out, layer=1)
        r = verify_export(sources["qwen2"], out, "mlx", quant, PROMPTS, 8)
        print(f"\nzeroed layer ({quant}):", format_report(r))
        assert not r.passed and r.kl_mean > r.thresholds.max_kl


def test_verify_catches_swapped_gguf_attention_tensors(sources: dict[str, Path], tmp_path: Path) -> None:
    _need("gguf")
    for quant in ("fp32", "q8"):
        out = export_gguf(sources["llama"], tmp_path / f"m-{quant}.gguf", quant)
        assert verify_export(sources["llama"], out, "gguf", quant, PROMPTS, 8).passed
        swap_gguf_tensors(out, "blk.0.attn_q.weight", "blk.0.attn_output.weight")
        r = verify_export(sources["llama"], out, "gguf", quant, PROMPTS, 8)
        print(f"\nswapped attn_q/attn_output ({quant}):", format_report(r))
        assert not r.passed and r.kl_mean > r.thresholds.max_kl


def test_failed_verify_marks_the_artifact_failed(sources: dict[str, Path], tmp_path: Path) -> None:
    # A source whose tokenizer differs from... itself after export is impossible, so break the
    # exporter's input instead: convert a copy, then verify against the original (other weights).
    other = confident_copy(make_tiny_cached(arch="llama", seed=1), tmp_path / "other")
    shutil.copy2(sources["llama"] / "tokenizer.json", other / "tokenizer.json")
    m = convert(ConvertSpec(source=str(other), format="hf", quant="fp32", out=str(tmp_path / "o"), prompts=PROMPTS,
                            max_new_tokens=4))
    assert m.status == "verified"
    r = verify_export(sources["llama"], tmp_path / "o", "hf", "fp32", PROMPTS, 4)
    assert not r.passed and r.top1_agreement < 0.9
