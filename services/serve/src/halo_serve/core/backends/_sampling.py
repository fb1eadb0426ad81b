"""numpy sampling shared by the llama.cpp and MLX backends (the contract in ``base.py``):
penalties on the raw logits, log-softmax for logprobs, then greedy / temperature + top-p with a
private RNG per sequence — and the session bookkeeping both build on (:class:`HostSampledSession`)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from halo_common.errors import BadRequest, Unprocessable

from halo_serve.core.backends.base import (
    GenerationRequest,
    GenerationSession,
    IncrementalDetokenizer,
    LoadedModel,
    SamplingParams,
    ServeBackend,
    TokenEvent,
    TopLogprob,
)


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


def most_likely(backend: ServeBackend, model: LoadedModel, lp: np.ndarray, k: int) -> list[TopLogprob]:
    """The ``k`` most likely tokens of a log-softmax row (ties -> lowest id), with their strings."""
    idx = np.argsort(-lp, kind="stable")[:k]
    strs = backend.token_strings(model, [int(i) for i in idx])
    return [TopLogprob(int(i), s, float(lp[i])) for i, s in zip(idx, strs, strict=True)]


class HostSequence:
    """One sequence a host-sampled backend decodes: its request, detokenizer, generated-token counts
    (penalties), private RNG, the token sampled but not yet evaluated, and its length in the context."""

    def __init__(self, req: GenerationRequest, detok: IncrementalDetokenizer) -> None:
        self.req = req
        self.detok = detok
        self.counts: Counter[int] = Counter()
        self.rng = new_rng(req.params.seed)
        self.pending: int | None = None
        self.length = len(req.prompt_token_ids)
        self.state: Any = None  # the backend's own per-sequence state (MLX: its prompt cache)


class HostSampledSession(GenerationSession):
    """A session whose backend hands back raw logits and samples them here, in numpy (llama.cpp, MLX).

    Subclasses implement :meth:`step`: evaluate each sequence's prompt (first step) or its ``pending`` token
    (incrementing ``length``), then call :meth:`sample` with the last row of logits.
    """

    #: Backend name in error messages ("the mlx backend cannot serve adapters").
    backend_name = "host"

    def __init__(self, backend: ServeBackend, model: LoadedModel) -> None:
        self.backend = backend
        self.model = model
        self.seqs: dict[str, HostSequence] = {}

    @property
    def active(self) -> int:
        return len(self.seqs)

    def add(self, request: GenerationRequest) -> None:
        if request.adapter:
            raise Unprocessable(f"the {self.backend_name} backend cannot serve adapters", param="adapter")
        if len(request.prompt_token_ids) >= self.model.context_length:
            raise BadRequest(f"prompt of {len(request.prompt_token_ids)} tokens does not fit the context of "
                             f"{self.model.context_length}", param="prompt")
        decode = lambda ids: self.backend.detokenize(self.model, ids)  # noqa: E731
        self.seqs[request.request_id] = HostSequence(request, IncrementalDetokenizer(decode))

    def release(self, request_id: str) -> None:
        self.seqs.pop(request_id, None)

    def close(self) -> None:
        self.seqs.clear()

    def sample(self, rid: str, s: HostSequence, raw: np.ndarray) -> TokenEvent:
        """Penalties, logprobs, the pick, and the end of the sequence (EOS or a full context)."""
        p = s.req.params
        logits = apply_penalties(np.asarray(raw, dtype=np.float64), s.counts, p)
        tok = pick(logits, p, s.rng)
        ev = TokenEvent(request_id=rid, token_id=tok, text="")
        if p.logprobs:
            lp = log_softmax(logits)
            ev.logprob = float(lp[tok])
            ev.top_logprobs = most_likely(self.backend, self.model, lp, p.top_logprobs) if p.top_logprobs else []
        s.counts[tok] += 1
        if tok in self.model.eos_token_ids and not p.ignore_eos:
            ev.finish_reason = "stop"
            self.release(rid)
            return ev
        ev.text = s.detok.push(tok)
        s.pending = tok
        if s.length + 1 >= self.model.context_length:
            ev.finish_reason = "length"
            self.release(rid)
        return ev
