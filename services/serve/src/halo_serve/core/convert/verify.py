"""Round-trip verify: load an export in its own runtime and compare it with the source.

For every prompt of a fixed set: the export must tokenize the text exactly as the source does;
then both models are teacher-forced on the same ids (prompt + the source's greedy continuation)
and their next-token distributions compared at every position (top-1 agreement, KL(source||export)),
and the export's own greedy continuation is compared token by token with the source's.

    report = verify_export(source_dir, export_path, fmt="gguf", quant="q8")
    report.passed, report.top1_agreement, report.kl_mean

Thresholds (:data:`THRESHOLDS`) are per quantization: lossless dtypes near-exact, q8 high, q4 looser.
The greedy figure counts positions up to the first divergence (a quantized model that picks a
different near-tie token then continues from a different context, so later positions say nothing).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from halo_schemas.convert import VerifyReport, VerifyThresholds

#: Built-in prompts: plain text, digits, punctuation and ChatML turns (special tokens must survive export).
DEFAULT_PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, in a small village by the sea,",
    "def add(a, b):\n    return a + b\n",
    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
    "1, 2, 3, 4, 5, 6,",
    "Hello world! How are you today?",
]

# Greedy agreement is the weakest figure (one near-tie flip early ends the matching prefix), so its
# limits are loose; top-1 and KL carry the decision. q4 limits are set for 64-wide tiny models,
# where one quantization group spans a whole row; real models score better.
THRESHOLDS: dict[str, VerifyThresholds] = {
    "fp32": VerifyThresholds(min_top1=0.99, max_kl=1e-4, min_greedy=0.9),
    "fp16": VerifyThresholds(min_top1=0.97, max_kl=2e-3, min_greedy=0.6),
    "bf16": VerifyThresholds(min_top1=0.95, max_kl=1e-2, min_greedy=0.4),
    "q8": VerifyThresholds(min_top1=0.9, max_kl=3e-2, min_greedy=0.3),
    "q4": VerifyThresholds(min_top1=0.6, max_kl=0.35, min_greedy=0.1),
}


class Runtime(Protocol):
    """A loaded model in some runtime; the three calls the verify needs."""

    name: str

    def tokenize(self, text: str) -> list[int]: ...
    def logits(self, ids: list[int]) -> np.ndarray: ...  # [len(ids), vocab], float
    def close(self) -> None: ...


def greedy(rt: Runtime, ids: list[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``ids`` (full recompute per token: the verify's models are small or few)."""
    out: list[int] = []
    seq = list(ids)
    for _ in range(n):
        tok = int(np.argmax(rt.logits(seq)[-1]))
        out.append(tok)
        seq.append(tok)
    return out


class HFRuntime:
    """transformers, in the checkpoint's own dtype (CPU or the first accelerator torch finds)."""

    name = "transformers"

    def __init__(self, path: str | Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype="auto").eval()

    def tokenize(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=True)["input_ids"])

    def logits(self, ids: list[int]) -> np.ndarray:
        with self.torch.no_grad():
            out = self.model(self.torch.tensor([ids])).logits[0]
        return out.float().numpy()

    def greedy(self, ids: list[int], n: int) -> list[int]:
        with self.torch.no_grad():
            out = self.model.generate(self.torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                      pad_token_id=self.tok.pad_token_id)
        return out[0, len(ids):].tolist()

    def close(self) -> None:
        del self.model


class GGUFRuntime:
    """llama.cpp through llama-cpp-python (``logits_all`` for per-position logits)."""

    name = "llama.cpp"

    def __init__(self, path: str | Path, n_ctx: int = 512) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, n_threads=2, verbose=False, seed=0)
        meta = self.llm.metadata
        self.add_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=self.add_bos, special=True)

    def logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def close(self) -> None:
        self.llm.close()


class MLXRuntime:
    """mlx-lm (Metal on macOS, the CPU build on Linux)."""

    name = "mlx-lm"

    def __init__(self, path: str | Path) -> None:
        import mlx.core as mx
        from mlx_lm import load

        from halo_serve.core.convert.exporters import mlx_config_fixes

        self.mx = mx
        fixes = mlx_config_fixes(json.loads((Path(path) / "config.json").read_text()))
        self.model, self.tok = load(str(path), model_config=fixes or None)

    def tokenize(self, text: str) -> list[int]:
        return list(self.tok._tokenizer(text, add_special_tokens=True)["input_ids"])

    def logits(self, ids: list[int]) -> np.ndarray:
        out = self.model(self.mx.array([ids]))[0].astype(self.mx.float32)
        return np.array(out)

    def close(self) -> None:
        del self.model


def open_runtime(path: str | Path, fmt: str) -> Runtime:
    """The runtime that loads ``fmt`` (hf -> transformers, gguf -> llama.cpp, mlx -> mlx-lm)."""
    return {"hf": HFRuntime, "gguf": GGUFRuntime, "mlx": MLXRuntime}[fmt](path)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def compare(source: Runtime, export: Runtime, quant: str, prompts: list[str] | None = None,
            max_new_tokens: int = 16, source_greedy: Any = None) -> VerifyReport:
    """Compare two loaded runtimes (see the module docstring); thresholds from :data:`THRESHOLDS`."""
    t0 = time.perf_counter()
    prompts = prompts or DEFAULT_PROMPTS
    th = THRESHOLDS[quant]
    tok_ok, top1, kls, g_match, g_total = 0, [], [], 0, 0
    for text in prompts:
        ids = source.tokenize(text)
        if export.tokenize(text) == ids:
            tok_ok += 1
        gen = source_greedy(ids, max_new_tokens) if source_greedy else greedy(source, ids, max_new_tokens)
        seq = ids + gen
        ls, le = _log_softmax(source.logits(seq)), _log_softmax(export.logits(seq))
        if ls.shape != le.shape:
            vocab = min(ls.shape[1], le.shape[1])  # padded vocabularies: compare the shared ids
            ls, le = _log_softmax(ls[:, :vocab]), _log_softmax(le[:, :vocab])
        top1 += list(ls.argmax(-1) == le.argmax(-1))
        kls += list((np.exp(ls) * (ls - le)).sum(-1))
        egen = greedy(export, ids, max_new_tokens)
        n_same = next((i for i, (a, b) in enumerate(zip(gen, egen, strict=True)) if a != b), len(gen))
        g_match += n_same
        g_total += len(gen)
    figures = {
        "tokenizer_agreement": tok_ok / len(prompts),
        "top1_agreement": float(np.mean(top1)),
        "kl_mean": float(np.mean(kls)),
        "kl_max": float(np.max(kls)),
        "greedy_agreement": g_match / max(g_total, 1),
    }
    failures = []
    if figures["tokenizer_agreement"] < th.min_tokenizer:
        failures.append(f"tokenizer: {tok_ok}/{len(prompts)} prompts tokenized like the source (need all)")
    if figures["top1_agreement"] < th.min_top1:
        failures.append(f"top-1 agreement {figures['top1_agreement']:.4f} < {th.min_top1}")
    if not math.isfinite(figures["kl_mean"]) or figures["kl_mean"] > th.max_kl:
        failures.append(f"mean KL {figures['kl_mean']:.3g} > {th.max_kl}")
    if figures["greedy_agreement"] < th.min_greedy:
        failures.append(f"greedy agreement {figures['greedy_agreement']:.4f} < {th.min_greedy}")
    return VerifyReport(passed=not failures, runtime=export.name, quant=quant, prompts=len(prompts),
                        positions=len(top1), thresholds=th, failures=failures,
                        seconds=time.perf_counter() - t0, **figures)


def verify_export(source_dir: str | Path, export_path: str | Path, fmt: str, quant: str,
                  prompts: list[str] | None = None, max_new_tokens: int = 16) -> VerifyReport:
    """Load the HF source and the export (in its own runtime) and :func:`compare` them."""
    src = HFRuntime(source_dir)
    exp = open_runtime(export_path, fmt)
    try:
        return compare(src, exp, quant, prompts, max_new_tokens, source_greedy=src.greedy)
    finally:
        exp.close()
        src.close()


def format_report(r: VerifyReport) -> str:
    """One human line: verdict and every figure against its limit."""
    t = r.thresholds
    return (f"verify {'PASSED' if r.passed else 'FAILED'} ({r.runtime}, {r.quant}, {r.prompts} prompts, "
            f"{r.positions} positions): tokenizer {r.tokenizer_agreement:.2f} (>= {t.min_tokenizer}), "
            f"top-1 {r.top1_agreement:.4f} (>= {t.min_top1}), KL mean {r.kl_mean:.2e} (<= {t.max_kl}) max {r.kl_max:.2e}, "
            f"greedy {r.greedy_agreement:.3f} (>= {t.min_greedy}); {r.seconds:.1f}s"
            + ("" if r.passed else " — " + "; ".join(r.failures)))
