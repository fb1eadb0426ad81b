"""The three exporters: HF (dtype recast), GGUF (llama.cpp's converter + quantizer), MLX (mlx-lm).

Each takes a local HF model directory and writes ``out``; none verifies (see ``verify.py``).

    export_hf(src, out, "bf16")
    export_gguf(src, out / "model-q8.gguf", "q8")     # convert_hf_to_gguf.py, then llama_model_quantize
    export_mlx(src, out, "q4")                         # mlx_lm.convert, affine group quantization
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from halo_common.errors import Internal, Unavailable

from halo_serve.core.convert.common import llama_cpp_dir

HF_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def export_hf(src: Path, out: Path, quant: str) -> Path:
    """Recast to ``quant`` (fp32/fp16/bf16), safetensors, with tokenizer, chat template and generation config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, HF_DTYPES[quant]))
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    for extra in ("chat_template.jinja", "generation_config.json"):
        if (src / extra).is_file() and not (out / extra).exists():
            shutil.copy2(src / extra, out / extra)
    return out


# ---- GGUF ----------------------------------------------------------------------------------------
# Runs llama.cpp's own converter with its vendored gguf-py (the pip `gguf` lags the converter). Its
# BPE pre-tokenizer detection hashes the token ids of a test string and refuses unknown tokenizers;
# ours (a byte-level BPE trained by the tiny-model kit) is unknown by hash, so when detection fails
# we name the pre-tokenizer from the one transformers applies: GPT-2's ByteLevel regex -> "gpt-2", Qwen2's
# split pattern -> "qwen2". Anything else still fails loudly; the verify's tokenizer check catches a
# wrong guess (digits and whitespace tokenize differently).
_CONVERT_SHIM = r"""
import json, os, runpy, sys
L = sys.argv[1]
sys.path.insert(0, L); sys.path.insert(1, os.path.join(L, "gguf-py"))
import conversion.base as cb
_orig = cb.TextModel.get_vocab_base_pre
QWEN2 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
def _pre(self, tokenizer):
    try:
        return _orig(self, tokenizer)
    except NotImplementedError:
        # The pre-tokenizer transformers really applies: its tokenizer class may replace the one in
        # tokenizer.json (transformers 5's Qwen2Tokenizer installs Qwen2's split pattern).
        backend = getattr(tokenizer, "_tokenizer", None)
        tj = json.loads(backend.to_str()) if backend is not None else json.load(
            open(os.path.join(str(self.dir_model), "tokenizer.json")))
        pre = tj.get("pre_tokenizer") or {}
        parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
        for p in parts:
            if p.get("type") == "ByteLevel" and p.get("use_regex", True):
                return "gpt-2"
            if p.get("type") == "Split" and (p.get("pattern") or {}).get("Regex") == QWEN2:
                return "qwen2"
        raise
cb.TextModel.get_vocab_base_pre = _pre
script = os.path.join(L, "convert_hf_to_gguf.py")
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""

GGUF_OUTTYPES = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}


def gguf_convert_cmd(src: Path, outfile: Path, outtype: str) -> list[str]:
    """The converter command line (used by the exporter and by the benchmark's baseline)."""
    lcpp = llama_cpp_dir()
    if lcpp is None:
        raise Unavailable("llama.cpp's converter is not cached: run scripts/dev setup (or set HALO_LLAMA_CPP_DIR)",
                          param="format")
    return [sys.executable, "-c", _CONVERT_SHIM, str(lcpp), str(src), "--outfile", str(outfile), "--outtype", outtype]


def _source_outtype(src: Path) -> str:
    """Intermediate GGUF type before quantizing: the checkpoint's own precision (no extra rounding)."""
    cfg = json.loads((src / "config.json").read_text())
    dt = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
    return {"float16": "f16", "bfloat16": "bf16"}.get(dt, "f32")


def quantize_gguf(src: Path, dst: Path, quant: str, nthread: int | None = None) -> None:
    """llama.cpp's quantizer through the llama-cpp-python bindings: q8 -> Q8_0, q4 -> Q4_K_M."""
    import ctypes

    import llama_cpp

    ftype = {"q8": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[quant]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = nthread or os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise Internal(f"llama_model_quantize({quant}) failed with status {rc}")


def export_gguf(src: Path, out: Path, quant: str) -> Path:
    """Convert ``src`` to the GGUF file ``out`` (fp32/fp16/bf16 directly; q8/q4 via an intermediate)."""
    if quant in GGUF_OUTTYPES:
        _run_converter(gguf_convert_cmd(src, out, GGUF_OUTTYPES[quant]))
        return out
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".gguf-") as tmp:
        mid = Path(tmp) / "model.gguf"
        _run_converter(gguf_convert_cmd(src, mid, _source_outtype(src)))
        quantize_gguf(mid, out, quant)
    return out


def _run_converter(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NO_LOCAL_GGUF": ""})
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise Internal(f"llama.cpp convert_hf_to_gguf.py failed (exit {proc.returncode}):\n{tail}")


# ---- MLX -----------------------------------------------------------------------------------------
MLX_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def mlx_config_fixes(config: dict) -> dict:
    """Top-level keys mlx-lm needs that transformers >= 5 nests: ``rope_parameters.rope_theta``.

    mlx-lm reads ``rope_theta`` from the top level and otherwise falls back to its own default
    (Qwen2: 1e6), so a transformers-5 checkpoint with theta 1e4 silently computes different
    positions (the round-trip verify caught this: KL 1e-4 at fp32 on the tiny Qwen2)."""
    rp = config.get("rope_parameters")
    if isinstance(rp, dict) and "rope_theta" in rp and "rope_theta" not in config:
        return {"rope_theta": rp["rope_theta"]}
    return {}


def export_mlx(src: Path, out: Path, quant: str, group_size: int = 64) -> Path:
    """mlx-lm's converter: fp32/fp16/bf16 as such, q8/q4 as affine group quantization (``group_size``)."""
    from mlx_lm import convert

    if quant in MLX_DTYPES:
        convert(str(src), str(out), dtype=MLX_DTYPES[quant])
    else:
        convert(str(src), str(out), quantize=True, q_bits=8 if quant == "q8" else 4, q_group_size=group_size,
                q_mode="affine")
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    fixes = mlx_config_fixes(json.loads((src / "config.json").read_text()))
    if fixes:
        cfg_path.write_text(json.dumps({**cfg, **fixes}, indent=4))
    return out
