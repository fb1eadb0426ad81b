"""numpy sampling shared by the llama.cpp and MLX backends (the contract in ``base.py``):
penalties on the raw logits, log-softmax for logprobs, then greedy / temperature + top-p with a
private RNG per sequence."""

from __future__ import annotations

from collections import Counter

import numpy as np

from halo_serve.core.backends.base import SamplingParams


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def apply_penalties(logits: np.ndarray, generated: Counter[int], p: SamplingParams) -> np.ndarray:
    """OpenAI: ``logit -= presence * (count > 0) + frequency * count`` over the generated tokens."""
    if not generated or (p.presence_penalty == 0 and p.frequency_penalty == 0):
        return logits
    out = logits.astype(np.float64, copy=True)
    ids = np.fromiter(generated.keys(), dtype=np.int64)
    counts = np.fromiter(generated.values(), dtype=np.float64)
    out[ids] -= p.presence_penalty + p.frequency_penalty * counts
    return out


def pick(logits: np.ndarray, p: SamplingParams, rng: np.random.Generator) -> int:
    """Greedy at temperature 0 (ties -> lowest id), else temperature then top-p sampling."""
    if p.temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / p.temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if p.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cum, p.top_p) + 1)]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return int(rng.choice(len(probs), p=probs))


def new_rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(seed)
