"""The one interface every serve backend implements (transformers, llama.cpp, MLX, vLLM).

The engine (:mod:`halo_serve.core.engine`) owns queueing, batching decisions, stop strings,
``max_tokens``, cancellation and the OpenAI shapes; a backend only loads models, renders prompts,
and advances sequences one token per :meth:`GenerationSession.step`. How the engine drives it::

    backend = make_backend("transformers")
    model = backend.load(ModelSource(path="/models/qwen", format="hf"))
    ids = backend.tokenize(model, backend.render_chat(model, messages, tools), add_special_tokens=False)
    session = backend.open_session(model)          # one per loaded model, lives as long as it
    session.add(GenerationRequest("req-1/0", ids, SamplingParams(max_tokens=64, temperature=0)))
    while session.active:
        for ev in session.step():                  # one new token for every active sequence
            ...                                    # ev.request_id, ev.token_id, ev.text, ev.logprob
        session.release("req-1/0")                 # engine decided it is done (stop string, max_tokens,
                                                   # client gone): the backend frees its slot/KV now
    backend.unload(model)

Contract shared by every backend (the engine relies on it):

* ``add`` only queues; the prefill happens inside the next ``step`` (so sequences added between
  steps join the running batch: continuous batching). A backend that cannot batch sets
  ``LoadedModel.max_batch_size = 1`` and the engine never gives it more than one active sequence.
* ``step`` returns exactly one :class:`TokenEvent` per active sequence (a sequence added before the
  call is active). A sequence that ends on its own (an end-of-sequence token unless
  ``ignore_eos``, or the context window is full) gets ``finish_reason`` ``"stop"`` / ``"length"``
  on its last event and is released by the backend itself; the EOS event has ``text=""``.
  ``max_tokens`` and stop strings are the engine's job (it calls ``release``); a backend may also
  honour ``max_tokens`` but must then mark that event ``"length"``.
* ``TokenEvent.text`` is the text this token adds, decoded incrementally
  (:class:`IncrementalDetokenizer`): concatenating a sequence's ``text`` gives
  ``detokenize(all its generated ids)`` (less a trailing incomplete character); a token that ends
  inside a multi-byte character yields ``""`` and the next one carries the whole character.
* Sampling: ``temperature == 0`` is greedy (argmax; ties -> lowest id). Otherwise penalties are
  applied to the raw logits first (OpenAI: ``logit -= presence * (count > 0) + frequency * count``
  over the tokens generated so far in this sequence), then temperature, then top-p. ``seed`` makes
  a sequence reproducible whatever else is in the batch (a private RNG per sequence).
* ``logprob`` / ``top_logprobs`` are log-softmax of the logits *after* penalties, *before*
  temperature/top-p (what OpenAI and vLLM report); filled only when ``params.logprobs`` is set
  (``top_logprobs`` entries: ``params.top_logprobs`` of them, most likely first).
* ``json_mode``: a backend that ``supports_json_mode`` masks tokens so the output stays a JSON
  prefix and ends (EOS allowed) only when the JSON value is complete. Others ignore it and the
  engine validates the text afterwards.
* ``adapter``: the name of an adapter loaded with :meth:`ServeBackend.load_adapter` on this model,
  or None for the base. Only backends with ``supports_adapters``.
* All methods are called from ONE engine thread per backend instance; they need no locking.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from halo_common.errors import Unprocessable

#: Weight formats a model can come in.
ModelFormat = Literal["hf", "gguf", "mlx"]
#: Why a sequence ended (``tool_calls`` is decided later by the chat layer, never by a backend).
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class ModelSource:
    """What to load: a local directory / file or a Hub id, its format, and backend options.

    ``options`` are backend specific (transformers: ``device``, ``dtype``; llama.cpp: ``n_ctx``,
    ``n_gpu_layers``; MLX: none yet). Unknown options are ignored."""

    path: str
    format: ModelFormat = "hf"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedModel:
    """A model a backend has loaded. The engine reads the public fields; ``native`` is the backend's.

    ``memory_bytes`` is what the weights take (the engine evicts LRU models over its budget);
    ``context_length`` is the most tokens (prompt + completion) a sequence may hold."""

    backend: str
    source: ModelSource
    context_length: int
    vocab_size: int
    eos_token_ids: frozenset[int]
    memory_bytes: int
    max_batch_size: int = 1
    chat_template: str | None = None
    adapters: dict[str, str] = field(default_factory=dict)  # adapter name -> path
    native: Any = None


@dataclass(frozen=True)
class SamplingParams:
    """Per-sequence sampling settings (already validated by the protocol layer)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    json_mode: bool = False
    ignore_eos: bool = False


@dataclass
class GenerationRequest:
    """One sequence to generate. ``request_id`` is unique among the session's sequences
    (the engine uses ``"<request>/<choice index>"``)."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    adapter: str | None = None


@dataclass(frozen=True)
class TopLogprob:
    """One candidate token: id, its text (``token_strings``) and log-probability."""

    token_id: int
    token: str
    logprob: float


@dataclass
class TokenEvent:
    """One generated token of one sequence (see the module contract for ``text``/``finish_reason``)."""

    request_id: str
    token_id: int
    text: str
    logprob: float | None = None
    top_logprobs: list[TopLogprob] | None = None
    finish_reason: FinishReason | None = None


@dataclass
class PromptScore:
    """Log-probabilities of a prompt's own tokens (``echo`` + ``logprobs`` on /v1/completions).

    ``logprobs[0]`` and ``top_logprobs[0]`` are None (the first token has no context); entry ``i``
    is ``log p(token_i | tokens_<i)``. ``tokens`` are the tokens' texts (``token_strings``)."""

    token_ids: list[int]
    tokens: list[str]
    logprobs: list[float | None]
    top_logprobs: list[list[TopLogprob] | None]


class GenerationSession(ABC):
    """The running batch of one loaded model (see the module docstring for the step contract)."""

    @abstractmethod
    def add(self, request: GenerationRequest) -> None:
        """Queue a sequence; its prefill runs in the next :meth:`step`."""

    @abstractmethod
    def step(self) -> list[TokenEvent]:
        """Advance every active sequence by one token; one event per sequence."""

    @abstractmethod
    def release(self, request_id: str) -> None:
        """Drop a sequence now (finished by the engine or cancelled) and free its slot/KV cache.
        Releasing an unknown or already-finished id is a no-op."""

    @property
    @abstractmethod
    def active(self) -> int:
        """Sequences added and not yet finished or released."""

    def close(self) -> None:  # noqa: B027 - optional hook, most sessions need nothing
        """Release everything (the model is being unloaded)."""


class ServeBackend(ABC):
    """Loads models of some formats and generates from them. One instance per service process."""

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]
    supports_adapters: ClassVar[bool] = False
    supports_json_mode: ClassVar[bool] = False

    @classmethod
    def available(cls) -> bool:
        """True when this backend's libraries import on this host."""
        return True

    # -- models ------------------------------------------------------------------------------------
    @abstractmethod
    def load(self, source: ModelSource) -> LoadedModel:
        """Load a model; raise ``NotFound(param="model")`` for a missing path, ``Unprocessable`` for
        a format this backend cannot read."""

    @abstractmethod
    def unload(self, model: LoadedModel) -> None:
        """Free the model's memory (its session is closed first by the engine)."""

    def load_adapter(self, model: LoadedModel, name: str, path: str) -> None:
        """Attach a LoRA adapter under ``name`` (requests select it with ``adapter=name``)."""
        raise Unprocessable(f"the {self.name} backend cannot serve adapters", param="adapter")

    def unload_adapter(self, model: LoadedModel, name: str) -> None:
        raise Unprocessable(f"the {self.name} backend cannot serve adapters", param="adapter")

    # -- text --------------------------------------------------------------------------------------
    @abstractmethod
    def tokenize(self, model: LoadedModel, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (``add_special_tokens``: BOS etc. as the model expects for raw text)."""

    @abstractmethod
    def detokenize(self, model: LoadedModel, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids`` (special tokens skipped)."""

    @abstractmethod
    def token_strings(self, model: LoadedModel, token_ids: Sequence[int]) -> list[str]:
        """Each token's own text (for logprobs' ``token`` fields; may contain replacement chars)."""

    @abstractmethod
    def render_chat(
        self, model: LoadedModel, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        """The chat template applied to OpenAI-shaped ``messages`` (dicts: role, content, tool_calls,
        tool_call_id, name) with the generation prompt, as text to ``tokenize(...,
        add_special_tokens=False)``. ``tools`` (OpenAI tool dicts) go to the template's ``tools``
        variable. ``BadRequest(param="messages")`` when the model has no chat template."""

    # -- generation --------------------------------------------------------------------------------
    @abstractmethod
    def open_session(self, model: LoadedModel) -> GenerationSession:
        """The batch runner of ``model`` (the engine opens one per model)."""

    @abstractmethod
    def score_prompt(
        self, model: LoadedModel, token_ids: Sequence[int], top_logprobs: int = 0, adapter: str | None = None
    ) -> PromptScore:
        """Log-probabilities of every prompt token given those before it (one forward pass)."""


# ---- helpers every backend can use ---------------------------------------------------------------
class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas with any ``decode(ids) -> str``.

    Decodes a short window (``prefix`` already-emitted tokens + new ones) and emits only the
    characters past the already-emitted text; holds back output ending in U+FFFD (a multi-byte
    character split across tokens)::

        det = IncrementalDetokenizer(lambda ids: tok.decode(ids, skip_special_tokens=True))
        for tid in generated:
            delta = det.push(tid)
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], window: int = 6) -> None:
        self.decode = decode
        self.window = window
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the decode window
        self.read_offset = 0  # ids before this are fully emitted

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self.decode(self.ids[self.prefix_offset:self.read_offset])
        full_text = self.decode(self.ids[self.prefix_offset:])
        if full_text.endswith("\ufffd") or len(full_text) <= len(prefix_text):
            return ""
        delta = full_text[len(prefix_text):]
        self.read_offset = len(self.ids)
        self.prefix_offset = max(0, self.read_offset - self.window)
        return delta
