"""GGUF models through llama.cpp (``llama-cpp-python``).

    backend = make_backend("llamacpp")                       # options: n_threads, n_gpu_layers
    model = backend.load(ModelSource("/models/tiny-q8.gguf", format="gguf", options={"n_ctx": 2048}))

One sequence at a time (``max_batch_size = 1``: llama-cpp-python's high-level context holds one
sequence); the engine queues the rest. Tokenization parses special tokens (``special=True``) and
adds BOS only when the GGUF says so (``tokenizer.ggml.add_bos_token``). The chat template is the
GGUF's ``tokenizer.chat_template``, rendered with jinja2 (HF's ``{% generation %}`` markers
stripped). Prompt scoring needs per-position logits, so models load with ``logits_all=True``
unless ``options={"logits_all": False}`` (then ``echo`` + ``logprobs`` is refused).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from halo_common.errors import BadRequest, NotFound, Unprocessable

from halo_serve.core.backends._sampling import apply_penalties, log_softmax, new_rng, pick
from halo_serve.core.backends.base import (
    GenerationRequest,
    GenerationSession,
    IncrementalDetokenizer,
    LoadedModel,
    ModelSource,
    PromptScore,
    ServeBackend,
    TokenEvent,
    TopLogprob,
)

_GEN_TAGS = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


def gguf_file(path: str) -> Path:
    """The .gguf file ``path`` names (a file, or a directory holding exactly one)."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(p.glob("*.gguf"))
        if len(files) != 1:
            raise Unprocessable(f"{p} holds {len(files)} .gguf files; name one", param="model")
        return files[0]
    if not p.is_file():
        raise NotFound(f"GGUF file {p} does not exist", param="model")
    return p


def render_template(template: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                    bos: str = "", eos: str = "") -> str:
    """Render an HF-style chat template with jinja2's sandbox (as transformers does)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg: str) -> None:
        raise BadRequest(f"chat template: {msg}", param="messages")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda v, indent=None, **_: __import__("json").dumps(v, indent=indent, ensure_ascii=False)
    return env.from_string(_GEN_TAGS.sub("", template)).render(
        messages=messages, tools=tools, add_generation_prompt=True, bos_token=bos, eos_token=eos)


class _Native:
    def __init__(self, llm: Any, add_bos: bool, logits_all: bool) -> None:
        self.llm = llm
        self.add_bos = add_bos
        self.logits_all = logits_all


class LlamaCppBackend(ServeBackend):
    name = "llamacpp"
    formats = ("gguf",)

    def __init__(self, *, n_threads: int | None = None, n_gpu_layers: int = -1) -> None:
        self.n_threads = n_threads or max(1, (os.cpu_count() or 2))
        self.n_gpu_layers = n_gpu_layers

    @classmethod
    def available(cls) -> bool:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            return False
        return True

    # -- models ------------------------------------------------------------------------------------
    def load(self, source: ModelSource) -> LoadedModel:
        from llama_cpp import Llama

        if source.format != "gguf":
            raise Unprocessable(f"the llamacpp backend reads GGUF files, not {source.format!r}", param="model")
        path = gguf_file(source.path)
        opts = source.options
        logits_all = bool(opts.get("logits_all", True))
        try:
            llm = Llama(model_path=str(path), n_ctx=int(opts.get("n_ctx", 0) or 0), logits_all=logits_all,
                        n_threads=self.n_threads, n_gpu_layers=int(opts.get("n_gpu_layers", self.n_gpu_layers)),
                        seed=0, verbose=False)
        except ValueError as e:  # llama-cpp-python: "Failed to load model from file"
            raise Unprocessable(f"llama.cpp cannot load {path}: {e}", param="model") from None
        if llm.n_ctx() > 8192 and not opts.get("n_ctx"):
            # n_ctx=0 means "the model's training context"; cap the default so a 128K model does
            # not allocate a 128K KV cache (and logits_all rows) on load.
            llm.close()
            llm = Llama(model_path=str(path), n_ctx=8192, logits_all=logits_all, n_threads=self.n_threads,
                        n_gpu_layers=int(opts.get("n_gpu_layers", self.n_gpu_layers)), seed=0, verbose=False)
        meta = llm.metadata
        eos = {llm.token_eos()}
        for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
            if key in meta:
                eos.add(int(meta[key]))
        eos.discard(-1)
        return LoadedModel(
            backend=self.name, source=source, context_length=llm.n_ctx(), vocab_size=llm.n_vocab(),
            eos_token_ids=frozenset(eos), memory_bytes=path.stat().st_size, max_batch_size=1,
            chat_template=meta.get("tokenizer.chat_template"),
            native=_Native(llm, meta.get("tokenizer.ggml.add_bos_token", "false") == "true", logits_all),
        )

    def unload(self, model: LoadedModel) -> None:
        native: _Native = model.native
        native.llm.close()
        model.native = None

    # -- text --------------------------------------------------------------------------------------
    def tokenize(self, model: LoadedModel, text: str, add_special_tokens: bool = True) -> list[int]:
        n: _Native = model.native
        return n.llm.tokenize(text.encode(), add_bos=add_special_tokens and n.add_bos, special=True)

    def detokenize(self, model: LoadedModel, token_ids: Sequence[int]) -> str:
        return model.native.llm.detokenize(list(token_ids), special=False).decode("utf-8", errors="replace")

    def token_strings(self, model: LoadedModel, token_ids: Sequence[int]) -> list[str]:
        llm = model.native.llm
        return [llm.detokenize([t], special=True).decode("utf-8", errors="replace") for t in token_ids]

    def render_chat(self, model: LoadedModel, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None = None) -> str:
        if not model.chat_template:
            raise BadRequest("this model has no chat template; use /v1/completions", param="messages")
        llm = model.native.llm
        bos = self.token_strings(model, [llm.token_bos()])[0] if llm.token_bos() >= 0 else ""
        eos = self.token_strings(model, [llm.token_eos()])[0] if llm.token_eos() >= 0 else ""
        return render_template(model.chat_template, messages, tools, bos, eos)

    # -- generation --------------------------------------------------------------------------------
    def open_session(self, model: LoadedModel) -> GenerationSession:
        return LlamaCppSession(self, model)

    def score_prompt(self, model: LoadedModel, token_ids: Sequence[int], top_logprobs: int = 0,
                     adapter: str | None = None) -> PromptScore:
        n: _Native = model.native
        if adapter:
            raise Unprocessable("the llamacpp backend cannot serve adapters", param="adapter")
        if not n.logits_all:
            raise Unprocessable("this GGUF model was loaded without logits_all; prompt scoring is off", param="echo")
        ids = list(token_ids)
        if len(ids) > model.context_length:
            raise BadRequest(f"prompt of {len(ids)} tokens exceeds the context of {model.context_length}",
                             param="prompt")
        n.llm.reset()
        n.llm.eval(ids)
        scores = np.asarray(n.llm.scores[: len(ids)])
        strings = self.token_strings(model, ids)
        lps: list[float | None] = [None]
        tops: list[list[TopLogprob] | None] = [None]
        for i in range(1, len(ids)):
            lp = log_softmax(scores[i - 1])
            lps.append(float(lp[ids[i]]))
            tops.append(_top(self, model, lp, top_logprobs) if top_logprobs else [])
        n.llm.reset()
        return PromptScore(token_ids=ids, tokens=strings, logprobs=lps, top_logprobs=tops)


def _top(backend: ServeBackend, model: LoadedModel, lp: np.ndarray, k: int) -> list[TopLogprob]:
    idx = np.argsort(-lp, kind="stable")[:k]
    strs = backend.token_strings(model, [int(i) for i in idx])
    return [TopLogprob(int(i), s, float(lp[i])) for i, s in zip(idx, strs, strict=True)]


class _Seq:
    def __init__(self, req: GenerationRequest, detok: IncrementalDetokenizer) -> None:
        self.req = req
        self.detok = detok
        self.counts: Counter[int] = Counter()
        self.rng = new_rng(req.params.seed)
        self.pending: int | None = None  # sampled, not yet evaluated
        self.started = False


class LlamaCppSession(GenerationSession):
    """One sequence at a time in llama.cpp's context (the engine queues the others)."""

    def __init__(self, backend: LlamaCppBackend, model: LoadedModel) -> None:
        self.backend = backend
        self.model = model
        self.llm = model.native.llm
        self.seqs: dict[str, _Seq] = {}

    @property
    def active(self) -> int:
        return len(self.seqs)

    def add(self, request: GenerationRequest) -> None:
        if request.adapter:
            raise Unprocessable("the llamacpp backend cannot serve adapters", param="adapter")
        if self.seqs:
            raise Unprocessable("the llamacpp backend runs one sequence at a time (max_batch_size=1)")
        if len(request.prompt_token_ids) >= self.model.context_length:
            raise BadRequest(f"prompt of {len(request.prompt_token_ids)} tokens does not fit the context of "
                             f"{self.model.context_length}", param="prompt")
        decode = lambda ids: self.backend.detokenize(self.model, ids)  # noqa: E731
        self.seqs[request.request_id] = _Seq(request, IncrementalDetokenizer(decode))

    def release(self, request_id: str) -> None:
        self.seqs.pop(request_id, None)

    def close(self) -> None:
        self.seqs.clear()

    def step(self) -> list[TokenEvent]:
        events = []
        for rid, s in list(self.seqs.items()):
            if not s.started:
                self.llm.reset()
                self.llm.eval(list(s.req.prompt_token_ids))
                s.started = True
            elif s.pending is not None:
                self.llm.eval([s.pending])
            events.append(self._sample(rid, s))
        return events

    def _sample(self, rid: str, s: _Seq) -> TokenEvent:
        p = s.req.params
        raw = np.asarray(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float64)
        logits = apply_penalties(raw, s.counts, p)
        tok = pick(logits, p, s.rng)
        ev = TokenEvent(request_id=rid, token_id=tok, text="")
        if p.logprobs:
            lp = log_softmax(logits)
            ev.logprob = float(lp[tok])
            ev.top_logprobs = _top(self.backend, self.model, lp, p.top_logprobs) if p.top_logprobs else []
        s.counts[tok] += 1
        if tok in self.model.eos_token_ids and not p.ignore_eos:
            ev.finish_reason = "stop"
            self.release(rid)
            return ev
        ev.text = s.detok.push(tok)
        s.pending = tok
        if self.llm.n_tokens + 1 >= self.model.context_length:
            ev.finish_reason = "length"
            self.release(rid)
        return ev
