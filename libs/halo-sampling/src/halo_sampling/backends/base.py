"""The one interface every rollout backend implements, and the pieces they share.

A backend holds one policy (base model + optional adapter) and samples from it::

    backend = make_backend("transformers")            # or "mlx", "vllm"
    backend.load("/models/qwen", adapter="/runs/run-1/adapter")
    results = backend.generate([SampleRequest(prompt="2+2=", params=SampleParams(n=4, seed=1))])
    backend.update_weights("/runs/run-1/adapter")     # after the trainer saved a new adapter
    backend.weights_version                            # bumped by every update

Semantics shared by all backends (and tested on each one that runs here):

* ``temperature == 0`` is greedy; otherwise temperature is applied first, then top-p.
* Sample ``j`` of a request with seed ``s`` draws from its own RNG seeded with
  :func:`derive_seed` ``(s, j)``: the same seed gives the same completions whatever else is in
  the batch, and the first ``k`` completions of ``n=8`` equal those of ``n=k``.
* Generation stops at an end-of-sequence token (kept in ``token_ids``, not in ``text``), at the
  first stop string (text cut before it, its tokens kept) or at ``max_new_tokens``.
* ``logprob_sum`` is under the model's own distribution (temperature 1, no top-p), i.e. what a
  trainer computes as log pi(y|x).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from halo_common.errors import BadRequest, NotFound
from halo_schemas.rollout import Completion, SampleParams, SampleRequest, SampleResult

#: What ``update_weights`` accepts: a state dict (name -> tensor/array), a directory with an adapter
#: (``adapter_config.json``) or with model weights (``*.safetensors``), or None for "the module I
#: share with you was changed in place" (in-process trainers).
WeightsSource = Mapping[str, Any] | str | os.PathLike[str] | None


@runtime_checkable
class RolloutBackend(Protocol):
    """Batched sampling from one policy, with explicit, versioned weight updates."""

    name: str

    def load(self, model: str, adapter: str | None = None) -> None:
        """Load ``model`` (Hub id or local directory) plus an optional adapter directory."""

    def encode(self, req: SampleRequest) -> list[int]:
        """The prompt's token ids exactly as :meth:`generate` feeds them (chat template applied)."""

    def generate(self, requests: Sequence[SampleRequest], default: SampleParams | None = None) -> list[SampleResult]:
        """Sample every request (``default`` fills requests without ``params``); one result per request, in order."""

    def update_weights(self, source: WeightsSource = None) -> int:
        """Serve new weights from ``source``; returns the new :attr:`weights_version`."""

    @property
    def weights_version(self) -> int:
        """0 after load, +1 per :meth:`update_weights`."""

    def weights_fingerprint(self) -> str:
        """Short id naming the weights served now (changes with every update)."""

    def weights_hash(self) -> str:
        """sha256 over the parameter contents (costs a pass over the weights; for proofs and tests)."""

    def next_token_logprobs(self, token_ids: Sequence[int]) -> Any:
        """Log-probabilities (numpy array over the vocabulary) of the token after ``token_ids``."""

    def close(self) -> None:
        """Free the model."""


# ---- seeds ---------------------------------------------------------------------------------------
def derive_seed(seed: int, index: int) -> int:
    """Deterministic 63-bit seed for item ``index`` of something seeded with ``seed``.

    Used for sample ``j`` of a request and for prompt ``i`` of a job without its own seed, so neither
    depends on batch composition or on how many other items there are."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def random_seed() -> int:
    return secrets.randbits(63)


@dataclass
class PreparedRequest:
    """A request resolved for generation: token ids, parameters, seed, per-sample seeds."""

    index: int
    prompt_ids: list[int]
    params: SampleParams
    seed: int
    sample_seeds: list[int] = field(default_factory=list)


def resolve_params(req: SampleRequest, default: SampleParams | None) -> SampleParams:
    return req.params or default or SampleParams()


def prepare(requests: Sequence[SampleRequest], default: SampleParams | None, encode: Any) -> list[PreparedRequest]:
    """Tokenize every request with ``encode(req) -> list[int]`` and fix its seeds."""
    out = []
    for i, req in enumerate(requests):
        params = resolve_params(req, default)
        seed = params.seed if params.seed is not None else random_seed()
        ids = encode(req)
        if not ids:
            raise BadRequest(f"requests[{i}]: the prompt encodes to zero tokens", param=f"requests[{i}]")
        out.append(PreparedRequest(i, ids, params, seed, [derive_seed(seed, j) for j in range(params.n)]))
    return out


# ---- prompts -------------------------------------------------------------------------------------
def encode_with_hf_tokenizer(tokenizer: Any, req: SampleRequest, vocab_size: int | None = None) -> list[int]:
    """Token ids of a request with a Hugging Face tokenizer: raw prompts get the tokenizer's special
    tokens (e.g. BOS), chat prompts go through the chat template with the generation prompt."""
    if req.prompt_token_ids is not None:
        ids = list(req.prompt_token_ids)
        if vocab_size is not None and max(ids) >= vocab_size:
            raise BadRequest(f"prompt_token_ids contain id {max(ids)} >= vocabulary size {vocab_size}",
                             param="prompt_token_ids")
        return ids
    if req.messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise BadRequest("this model's tokenizer has no chat template: send 'prompt' text instead of 'messages'",
                             param="messages")
        text = tokenizer.apply_chat_template(
            [m.model_dump() for m in req.messages], add_generation_prompt=True, tokenize=False
        )
        # The template already wrote every special token it wants (BOS included).
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert req.prompt is not None
    return list(tokenizer(req.prompt, add_special_tokens=True)["input_ids"])


def eos_ids_of(tokenizer: Any, generation_config: Any = None) -> set[int]:
    """Every token id that ends generation: the generation config's eos ids and the tokenizer's eos."""
    ids: set[int] = set()
    for source in (getattr(generation_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list | tuple | set):
            ids.update(int(x) for x in source)
    return ids


# ---- stop strings --------------------------------------------------------------------------------
def find_stop(text: str, stops: Sequence[str], start: int = 0) -> tuple[int, str] | None:
    """Earliest occurrence at or after ``start`` of any stop string: ``(index, stop)``, or None.

    ``start`` lets a decoder only search the new tail (minus the longest stop) each step."""
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s, max(0, start))
        if i != -1 and (best is None or i < best[0] or (i == best[0] and len(s) > len(best[1]))):
            best = (i, s)
    return best


class StopWatcher:
    """Per-sequence incremental stop-string detection over decoded text."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = list(stops)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.searched = 0  # characters of text already known to be stop-free, minus overlap

    def check(self, text: str) -> tuple[int, str] | None:
        if not self.stops:
            return None
        hit = find_stop(text, self.stops, self.searched)
        self.searched = max(0, len(text) - self.longest + 1)
        return hit


def make_completion(
    index: int,
    token_ids: list[int],
    text: str,
    finish_reason: str,
    stop: str | None,
    logprobs: list[float] | None,
    want_token_logprobs: bool,
    seed: int | None,
    *,
    logprob_sum: float | None = None,
) -> Completion:
    """A :class:`Completion`; ``logprob_sum`` defaults to ``sum(logprobs)`` when those are known."""
    if logprob_sum is None and logprobs is not None:
        logprob_sum = float(sum(logprobs))
    return Completion(
        index=index,
        text=text,
        token_ids=token_ids,
        num_tokens=len(token_ids),
        finish_reason=finish_reason,  # type: ignore[arg-type]
        stop=stop,
        logprob_sum=logprob_sum,
        token_logprobs=[float(x) for x in logprobs] if (want_token_logprobs and logprobs is not None) else None,
        seed=seed,
    )


def assemble(prepared: Sequence[PreparedRequest], done: Mapping[tuple[int, int], Completion]) -> list[SampleResult]:
    """Results in request order from completions keyed by (request index, sample index)."""
    return [
        SampleResult(
            index=p.index,
            prompt_num_tokens=len(p.prompt_ids),
            prompt_token_ids=list(p.prompt_ids),
            seed=p.seed,
            completions=[done[(p.index, j)] for j in range(p.params.n)],
        )
        for p in prepared
    ]


# ---- weight sources ------------------------------------------------------------------------------
#: Files whose size/mtime name a directory's weights (what a trainer rewrites on save).
_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.npz", "adapter_config.json", "config.json")


def is_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or os.path.isdir(os.path.expanduser(path))


def check_local_dir(path: str, param: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise NotFound(f"{param} directory not found: {path}", param=param)
    return p


def dir_fingerprint(path: str | os.PathLike[str] | None) -> str:
    """Cheap fingerprint of a weights directory from the names, sizes and mtimes of its weight files
    (a Hub id fingerprints as itself). Changes whenever a trainer rewrites the weights."""
    if path is None:
        return "-"
    p = Path(path).expanduser()
    if not p.is_dir():
        return f"hub:{path}"
    h = hashlib.sha256()
    for pattern in _WEIGHT_FILES:
        for f in sorted(p.glob(pattern)):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    p = Path(path).expanduser()
    return (p / "adapter_config.json").is_file() or (p / "adapters.safetensors").is_file()


def is_peft_adapter(path: str | os.PathLike[str]) -> bool:
    cfg = Path(path).expanduser() / "adapter_config.json"
    if not cfg.is_file():
        return False
    try:
        return "peft_type" in json.loads(cfg.read_text())
    except ValueError:
        return False


def safetensors_files(path: str | os.PathLike[str]) -> list[Path]:
    """The weight shards of a model directory (``*.safetensors``); NotFound when there are none."""
    files = sorted(Path(path).expanduser().glob("*.safetensors"))
    if not files:
        raise NotFound(f"no *.safetensors weights in {path}", param="source")
    return files


def fingerprint(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


class VersionedWeights:
    """Weight-version bookkeeping every backend shares, so a result can prove which weights produced it.

    The version starts at 0 when a model is loaded and grows by one per :meth:`update_weights`; the source
    records the lineage (``<model dir fingerprint>+<adapter fingerprint>`` then ``>`` one fingerprint per
    update read from disk; ``mem:<id>`` for a trainer's in-memory model). Subclasses set ``name``,
    ``model_name`` and ``adapter``, and call :meth:`_weights_loaded` / :meth:`_weights_updated`.
    """

    name: str
    model_name: str | None = None
    adapter: str | None = None
    _version: int = 0
    _source: str = "-"

    def _weights_loaded(self, model: str | None, adapter: str | None) -> None:
        self._version = 0
        self._source = f"{dir_fingerprint(model)}+{dir_fingerprint(adapter)}"

    def _weights_in_memory(self, obj: object) -> None:
        self._source = f"mem:{id(obj)}"

    def _weights_updated(self, path: str | os.PathLike[str] | None = None) -> int:
        """Record one update (read from ``path`` when given); returns the new version."""
        if path is not None:
            self._source = f"{self._source}>{dir_fingerprint(path)}"
        self._version += 1
        return self._version

    @property
    def weights_version(self) -> int:
        return self._version

    def weights_fingerprint(self) -> str:
        """Changes whenever the served weights change: backend, model, adapter, lineage and version."""
        return fingerprint(self.name, self.model_name, self.adapter, self._source, self._version)
