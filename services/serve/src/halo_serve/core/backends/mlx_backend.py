"""MLX models through mlx-lm (Metal on Apple silicon, the CPU build on Linux).

    backend = make_backend("mlx")
    model = backend.load(ModelSource("/models/tiny-mlx-q4", format="mlx"))   # an MLX folder or an HF folder

Each sequence keeps its own KV cache (``mlx_lm.models.cache.make_prompt_cache``); a step advances
every active sequence by one token (one forward per sequence: several sequences run concurrently
but do not yet share forward passes). Sampling and logprobs follow the ``base.py`` contract
(greedy at temperature 0, penalties, then temperature and top-p; per-sequence RNG from ``seed``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from halo_common.errors import BadRequest, NotFound, Unprocessable

from halo_serve.core.backends._sampling import HostSampledSession, log_softmax, most_likely
from halo_serve.core.backends.base import (
    GenerationSession,
    LoadedModel,
    ModelSource,
    PromptScore,
    ServeBackend,
    TokenEvent,
    TopLogprob,
)
from halo_serve.core.backends.llamacpp import render_template


class _Native:
    def __init__(self, model: Any, tok: Any) -> None:
        self.model = model
        self.tok = tok  # mlx-lm TokenizerWrapper
        self.hf = tok._tokenizer  # the underlying transformers tokenizer


class MLXBackend(ServeBackend):
    name = "mlx"
    formats = ("mlx", "hf")

    def __init__(self, *, max_batch_size: int = 8) -> None:
        self.max_batch_size = max_batch_size

    @classmethod
    def available(cls) -> bool:
        try:
            import mlx.core  # noqa: F401
            import mlx_lm  # noqa: F401
        except ImportError:
            return False
        return True

    def load(self, source: ModelSource) -> LoadedModel:
        from mlx_lm import load

        path = Path(source.path).expanduser()
        if not (path / "config.json").is_file():
            raise NotFound(f"MLX/HF model folder {path} (config.json) does not exist", param="model")
        from halo_serve.core.convert.exporters import mlx_config_fixes

        fixes = mlx_config_fixes(json.loads((path / "config.json").read_text()))
        try:
            model, tok = load(str(path), model_config=fixes or None)
        except (ValueError, KeyError) as e:
            raise Unprocessable(f"mlx-lm cannot load {path}: {e}", param="model") from None
        hf = tok._tokenizer
        size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
        ctx = int(getattr(model, "args", None) and getattr(model.args, "max_position_embeddings", 0) or 0) or 4096
        return LoadedModel(
            backend=self.name, source=source, context_length=ctx, vocab_size=len(hf),
            eos_token_ids=frozenset(int(i) for i in tok.eos_token_ids), memory_bytes=size,
            max_batch_size=self.max_batch_size, chat_template=getattr(hf, "chat_template", None),
            native=_Native(model, tok),
        )

    def unload(self, model: LoadedModel) -> None:
        model.native = None

    def tokenize(self, model: LoadedModel, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(model.native.hf(text, add_special_tokens=add_special_tokens)["input_ids"])

    def detokenize(self, model: LoadedModel, token_ids: Sequence[int]) -> str:
        return model.native.hf.decode(list(token_ids), skip_special_tokens=True)

    def token_strings(self, model: LoadedModel, token_ids: Sequence[int]) -> list[str]:
        hf = model.native.hf
        return [hf.decode([t], skip_special_tokens=False) for t in token_ids]

    def render_chat(self, model: LoadedModel, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None = None) -> str:
        if not model.chat_template:
            raise BadRequest("this model has no chat template; use /v1/completions", param="messages")
        hf = model.native.hf
        return render_template(model.chat_template, messages, tools, hf.bos_token or "", hf.eos_token or "")

    def open_session(self, model: LoadedModel) -> GenerationSession:
        return MLXSession(self, model)

    def forward(self, model: LoadedModel, ids: Sequence[int], cache: Any = None) -> np.ndarray:
        """Logits [len(ids), vocab] as float32 numpy (``cache``: a prompt cache to extend)."""
        import mlx.core as mx

        out = model.native.model(mx.array([list(ids)]), cache=cache)[0].astype(mx.float32)
        return np.array(out)

    def score_prompt(self, model: LoadedModel, token_ids: Sequence[int], top_logprobs: int = 0,
                     adapter: str | None = None) -> PromptScore:
        if adapter:
            raise Unprocessable("the mlx backend cannot serve adapters", param="adapter")
        ids = list(token_ids)
        logits = self.forward(model, ids)
        lps: list[float | None] = [None]
        tops: list[list[TopLogprob] | None] = [None]
        for i in range(1, len(ids)):
            lp = log_softmax(logits[i - 1])
            lps.append(float(lp[ids[i]]))
            tops.append(most_likely(self, model, lp, top_logprobs) if top_logprobs else [])
        return PromptScore(token_ids=ids, tokens=self.token_strings(model, ids), logprobs=lps, top_logprobs=tops)


class MLXSession(HostSampledSession):
    """Sequences side by side, each with its own mlx-lm prompt cache."""

    backend_name = "mlx"
    backend: MLXBackend

    def step(self) -> list[TokenEvent]:
        from mlx_lm.models.cache import make_prompt_cache

        events = []
        for rid, s in list(self.seqs.items()):
            if s.state is None:  # first step: the prompt, into this sequence's own prompt cache
                s.state = make_prompt_cache(self.model.native.model)
                row = self.backend.forward(self.model, s.req.prompt_token_ids, s.state)[-1]
            else:
                row = self.backend.forward(self.model, [s.pending], s.state)[-1]
                s.length += 1
            events.append(self.sample(rid, s, row))
        return events
