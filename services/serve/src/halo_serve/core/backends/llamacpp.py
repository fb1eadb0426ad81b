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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from halo_common.errors import BadRequest, NotFound, Unprocessable

from halo_serve.core.backends._sampling import HostSampledSession, log_softmax, most_likely
from halo_serve.core.backends.base import (
    GenerationRequest,
    GenerationSession,
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
        # llama.cpp's own default (half the logical CPUs, i.e. the physical cores on SMT machines):
        # more threads than cores makes ggml's spinning workers fight the HTTP side for the CPU.
        self.n_threads = n_threads or max(1, (os.cpu_count() or 2) // 2)
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
            tops.append(most_likely(self, model, lp, top_logprobs) if top_logprobs else [])
        n.llm.reset()
        return PromptScore(token_ids=ids, tokens=strings, logprobs=lps, top_logprobs=tops)


class LlamaCppSession(HostSampledSession):
    """One sequence at a time in llama.cpp's context (the engine queues the others)."""

    backend_name = "llamacpp"

    def __init__(self, backend: LlamaCppBackend, model: LoadedModel) -> None:
        super().__init__(backend, model)
        self.llm = model.native.llm

    def add(self, request: GenerationRequest) -> None:
        if self.seqs and not request.adapter:
            raise Unprocessable("the llamacpp backend runs one sequence at a time (max_batch_size=1)")
        super().add(request)

    def step(self) -> list[TokenEvent]:
        events = []
        for rid, s in list(self.seqs.items()):
            if s.pending is None:  # first step: the prompt (llama.cpp holds one sequence's context)
                self.llm.reset()
                self.llm.eval(list(s.req.prompt_token_ids))
            else:
                self.llm.eval([s.pending])
                s.length += 1
            raw = np.asarray(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float64)
            events.append(self.sample(rid, s, raw))
        return events
