"""Rollouts: sampling N completions per prompt from a base model (plus an optional adapter).

Small batches go over RPC (``halo.rpc.rollout.generate``: :class:`RolloutRequest` ->
:class:`RolloutResult`); large ones run as a job (``halo.job.rollout.generate`` with a
:class:`RolloutJobSpec`) that writes one JSON line per prompt (a :class:`SampleResult`) under the
run directory and reports the file in its ``artifact-added`` / ``finished`` events.

Usage::

    req = RolloutRequest(
        model="Qwen/Qwen2.5-0.5B-Instruct",
        params=SampleParams(n=8, temperature=0.8, max_new_tokens=128, seed=1),
        requests=[SampleRequest(prompt="2+2="), SampleRequest(messages=[ChatTurn(role="user", content="hi")])],
    )
    result = await bus.request(subjects.ROLLOUT_GENERATE, req, RolloutResult, timeout=120)
    for r in result.results:                 # one per request, in order
        texts = [c.text for c in r.completions]

``weights_version`` / ``weights_fingerprint`` in every result name the weights that produced it,
so a caller can prove a rollout used the policy it just wrote.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from halo_schemas.base import Message, UserInput
from halo_schemas.jobs import JobSpecBase

RolloutBackendName = Literal["auto", "transformers", "vllm", "mlx"]
FinishReason = Literal["stop", "length"]

#: Largest seed accepted (seeds are 63-bit so they fit every RNG we feed them to).
MAX_SEED = 2**63 - 1


class SampleParams(UserInput):
    """How to sample: the same knobs as vLLM / OpenAI, with the same meaning on every backend."""

    schema_id = "halo.spec.sample-params.v1"

    n: int = Field(default=1, ge=1, le=256, description="Completions sampled per prompt (1..256).")
    temperature: float = Field(
        default=1.0, ge=0.0, le=10.0,
        description="Softmax temperature (0..10). 0 means greedy decoding (argmax; every one of the n completions is "
        "then identical).",
    )
    top_p: float = Field(
        default=1.0, gt=0.0, le=1.0,
        description="Nucleus sampling (0 < top_p <= 1): sample from the smallest set of tokens whose probability "
        "adds up to top_p. 1 disables it. Ignored when temperature is 0.",
    )
    max_new_tokens: int = Field(
        default=256, ge=1, le=32768, description="Longest completion in tokens (1..32768); hitting it ends with "
        "finish_reason 'length'."
    )
    stop: list[str] = Field(
        default_factory=list, max_length=16,
        description="Up to 16 stop strings (each 1..256 characters). The completion text is cut before the first "
        "one that appears and finish_reason is 'stop'. The end-of-sequence token always stops too.",
    )
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED,
        description="Seed (0..2^63-1) for reproducible sampling: the same seed, prompt, parameters and weights give "
        "the same completions, whatever else is in the batch. Null: a random seed, reported in the result.",
    )
    logprobs: bool = Field(
        default=False, description="Also return the log-probability of every sampled token (the sum is always returned)."
    )

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: list[str]) -> list[str]:
        for i, s in enumerate(v):
            if not s or len(s) > 256:
                raise ValueError(f"stop[{i}] must be 1..256 characters, got {len(s)}")
        return v


class ChatTurn(UserInput):
    """One chat message of a ``messages`` prompt; the model's chat template turns the list into text."""

    schema_id = "halo.spec.chat-turn.v1"

    role: Literal["system", "user", "assistant", "tool"] = Field(description="Who speaks: system, user, assistant, tool.")
    content: str = Field(description="The message text.")


class SampleRequest(UserInput):
    """One prompt: exactly one of ``prompt`` (raw text), ``messages`` (chat, template applied with the
    generation prompt) or ``prompt_token_ids`` (already tokenized, used as is)."""

    schema_id = "halo.spec.sample-request.v1"

    prompt: str | None = Field(default=None, description="Raw prompt text (tokenized with the model's special tokens).")
    messages: list[ChatTurn] | None = Field(
        default=None, min_length=1, description="Chat messages; the chat template is applied with add_generation_prompt."
    )
    prompt_token_ids: list[int] | None = Field(
        default=None, min_length=1, description="Prompt token ids, used without any processing."
    )
    params: SampleParams | None = Field(
        default=None, description="Sampling parameters for this prompt; null: the enclosing request's params."
    )

    @model_validator(mode="after")
    def _exactly_one_prompt(self) -> SampleRequest:
        given = [k for k in ("prompt", "messages", "prompt_token_ids") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of prompt, messages or prompt_token_ids"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.prompt_token_ids is not None and any(t < 0 for t in self.prompt_token_ids):
            raise ValueError("prompt_token_ids must be non-negative token ids")
        return self


class Completion(Message):
    """One sampled completion."""

    schema_id = "halo.rpc.rollout-completion.v1"

    index: int = Field(ge=0, description="Index of this completion among the prompt's n (0-based).")
    text: str = Field(description="Decoded completion, special tokens removed, cut before the stop string if one matched.")
    token_ids: list[int] = Field(
        description="Generated token ids, including the end-of-sequence token or the tokens of a matched stop string "
        "(what the policy produced, for training on it)."
    )
    num_tokens: int = Field(ge=0, description="len(token_ids).")
    finish_reason: FinishReason = Field(description="stop: end-of-sequence or a stop string; length: max_new_tokens hit.")
    stop: str | None = Field(default=None, description="The stop string that matched; null for end-of-sequence or length.")
    logprob_sum: float | None = Field(
        default=None,
        description="Sum over token_ids of log p(token) under the model's own distribution (temperature 1, no top-p); "
        "null where the backend cannot report it.",
    )
    token_logprobs: list[float] | None = Field(
        default=None, description="Per-token log-probabilities (same distribution as logprob_sum), when params.logprobs."
    )
    seed: int | None = Field(default=None, description="Seed of this completion's sampler (derived from the request seed).")


class SampleResult(Message):
    """The completions of one prompt (one JSONL line of a rollout job's output)."""

    schema_id = "halo.rpc.rollout-sample-result.v1"

    index: int = Field(ge=0, description="Index of the prompt in the request (or line in the job input), 0-based.")
    prompt_num_tokens: int = Field(ge=0, description="Prompt length in tokens after the chat template.")
    prompt_token_ids: list[int] = Field(
        default_factory=list, description="The prompt's token ids as the model saw them (chat template applied)."
    )
    seed: int = Field(description="Seed the prompt was sampled with (the given one, or the random one drawn).")
    completions: list[Completion] = Field(description="n completions, in sample-index order.")


class RolloutRequest(Message):
    """Sample completions for a small batch of prompts (``halo.rpc.rollout.generate``).

    The gateway validates HTTP bodies of this shape strictly (unknown fields are refused)."""

    schema_id = "halo.rpc.rollout-request.v1"

    model: str | None = Field(
        default=None, description="Base model: Hub id or local HF directory. Null: the service's default model."
    )
    adapter: str | None = Field(default=None, description="Optional adapter directory (PEFT, or mlx-lm on the mlx backend).")
    backend: RolloutBackendName = Field(
        default="auto", description="auto (vllm on CUDA/ROCm with vLLM, mlx on Apple silicon, else transformers), "
        "transformers, vllm or mlx."
    )
    params: SampleParams = Field(default_factory=SampleParams, description="Default sampling parameters for every prompt.")
    requests: list[SampleRequest] = Field(min_length=1, max_length=4096, description="The prompts (1..4096).")


class RolloutResult(Message):
    """Completions for every prompt of a :class:`RolloutRequest`, in request order."""

    schema_id = "halo.rpc.rollout-result.v1"

    model: str = Field(description="Model that generated them.")
    adapter: str | None = Field(default=None, description="Adapter applied, if any.")
    backend: str = Field(description="Backend that generated them: transformers, vllm or mlx.")
    weights_version: int = Field(ge=0, description="Counter bumped by every weight update of the loaded model.")
    weights_fingerprint: str = Field(description="Hash naming the weights used (changes whenever they change).")
    results: list[SampleResult] = Field(description="One entry per request, in order.")
    num_samples: int = Field(ge=0, description="Completions generated in total.")
    num_tokens: int = Field(ge=0, description="Tokens generated in total.")
    elapsed_s: float = Field(ge=0, description="Generation wall time in seconds (model load excluded).")


class RolloutLoadRequest(Message):
    """Load (or re-read from disk) a model into the service's cache (``halo.rpc.rollout.load``)."""

    schema_id = "halo.rpc.rollout-load-request.v1"

    model: str | None = Field(default=None, description="Base model; null: the service's default model.")
    adapter: str | None = Field(default=None, description="Optional adapter directory.")
    backend: RolloutBackendName = Field(default="auto", description="auto, transformers, vllm or mlx.")
    reload: bool = Field(
        default=False, description="Re-read the weights from disk even when the files look unchanged."
    )


class RolloutLoaded(Message):
    """Reply to a load: which weights are now served."""

    schema_id = "halo.rpc.rollout-loaded.v1"

    model: str = Field(description="Base model loaded.")
    adapter: str | None = Field(default=None, description="Adapter applied, if any.")
    backend: str = Field(description="Backend that holds it.")
    weights_version: int = Field(ge=0, description="Weight-update counter of the loaded model.")
    weights_fingerprint: str = Field(description="Hash naming the weights served.")
    action: Literal["loaded", "cached", "updated"] = Field(
        description="loaded: newly loaded; cached: already loaded and current; updated: new weights read from disk."
    )
    load_s: float = Field(ge=0, description="Seconds spent loading or updating.")
    cached: list[str] = Field(default_factory=list, description="Every (backend, model, adapter) now cached, most recent last.")


class RolloutJobSpec(JobSpecBase):
    """A large rollout as a job: prompts inline or from a JSONL file, results as JSONL under the run dir.

    Prompts without their own seed get one derived from ``seed`` and their index, so a resumed job
    (after a worker died) regenerates exactly the lines it had not written yet."""

    schema_id = "halo.spec.rollout-job.v1"

    model: str = Field(min_length=1, description="Base model: Hub id or local HF directory.")
    adapter: str | None = Field(default=None, description="Optional adapter directory.")
    backend: RolloutBackendName = Field(default="auto", description="auto, transformers, vllm or mlx.")
    params: SampleParams = Field(default_factory=SampleParams, description="Default sampling parameters for every prompt.")
    requests: list[SampleRequest] = Field(default_factory=list, description="Inline prompts.")
    prompts_file: str | None = Field(
        default=None,
        description="JSONL file, one SampleRequest object per line (e.g. {\"prompt\": \"...\"} or {\"messages\": [...]}).",
    )
    chunk_size: int = Field(
        default=64, ge=1, le=4096, description="Prompts per generation call; progress and resume happen per chunk."
    )
    output: str | None = Field(
        default=None, description="Output JSONL path. Default: <run dir>/samples.jsonl."
    )

    @model_validator(mode="after")
    def _check_source(self) -> RolloutJobSpec:
        if not self.requests and not self.prompts_file:
            raise ValueError("give the prompts: requests (inline) or prompts_file (JSONL)")
        if self.requests and self.prompts_file:
            raise ValueError("requests and prompts_file are mutually exclusive")
        return self
