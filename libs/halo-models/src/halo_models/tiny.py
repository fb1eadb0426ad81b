"""Tiny-model kit: deterministic, random-weight Llama / Qwen2 models for tests and benchmarks.

Nothing here touches the network. A model directory built by this module looks exactly like one
downloaded from the Hub (``config.json``, ``model.safetensors``, ``generation_config.json``,
``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``), so every code path that
loads a real model with ``AutoModelForCausalLM.from_pretrained(path)`` can be tested with it.

Typical use::

    from halo_models.tiny import make_tiny, make_tiny_cached

    path = make_tiny("/tmp/tiny-llama")                      # llama, ~140K parameters, < 1 s
    path = make_tiny("/tmp/rm", arch="qwen2", seq_cls=True)  # reward-model head (num_labels=1)
    path = make_tiny("/tmp/bench", size="small")             # ~25M parameters, for benchmarks

    # In tests prefer the cached variant (or the fixtures in ``halo_models.pytest_plugin``):
    path = make_tiny_cached(arch="qwen2")                    # built once, then reused

The pieces are also available separately: :func:`build_tokenizer` trains the byte-level BPE
tokenizer (ChatML specials + chat template with ``{% generation %}`` markers, so
``return_assistant_tokens_mask=True`` works) and :func:`build_model` writes the model next to it.

Determinism: the tokenizer is trained on the corpus shipped in ``halo_models/data/corpus.txt``
with a deterministic BPE trainer, and weights are drawn from a private torch RNG seeded with
``seed``; the same spec on the same library versions gives byte-identical files.

Heavy imports (torch, transformers, tokenizers) happen inside the functions, so importing this
module (e.g. for :class:`TinySpec` or the CLI's ``--help``) stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "BOS_TOKEN",
    "CHATML_TEMPLATE",
    "EOS_TOKEN",
    "EOS_TOKEN_ID",
    "IM_END",
    "IM_START",
    "IM_START_ID",
    "KIT_VERSION",
    "MANIFEST_NAME",
    "PAD_TOKEN",
    "PAD_TOKEN_ID",
    "SIZE_PRESETS",
    "Arch",
    "SizeName",
    "TinySpec",
    "build_model",
    "build_tokenizer",
    "corpus_path",
    "default_cache_root",
    "make_tiny",
    "make_tiny_cached",
]

#: Bump whenever the files this kit writes change for the same spec (corpus, template, config
#: defaults, ...). It is part of the cache key, so stale cached builds are never reused.
KIT_VERSION = "1"

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
#: ``eos`` is ``<|im_end|>`` (as in Qwen2.5 instruct models): generation stops at the end of a turn.
EOS_TOKEN = IM_END
#: ``pad`` is ``<|endoftext|>``, distinct from eos, so masking padding never masks a real eos.
PAD_TOKEN = ENDOFTEXT
#: No BOS token, as in Qwen2; ChatML does not need one.
BOS_TOKEN: str | None = None
# Order fixes the ids: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2.
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
PAD_TOKEN_ID = SPECIAL_TOKENS.index(PAD_TOKEN)
EOS_TOKEN_ID = SPECIAL_TOKENS.index(EOS_TOKEN)
IM_START_ID = SPECIAL_TOKENS.index(IM_START)

#: ChatML chat template. The assistant content *and* its closing ``<|im_end|>`` sit inside
#: ``{% generation %}`` so ``apply_chat_template(..., return_assistant_tokens_mask=True,
#: return_dict=True)`` marks exactly the tokens a model should learn to produce: the reply and
#: the token that ends it (without which a finetuned model never learns to stop).
#: ``add_generation_prompt=True`` appends ``<|im_start|>assistant\n``.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set content = message['content'] if message['content'] is string else '' -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- content + '<|im_end|>' -}}{% endgeneration %}{{- '\\n' -}}"
    "{%- else -%}"
    "{{- content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

#: Name of the JSON file written next to the model, recording the spec and kit version.
MANIFEST_NAME = "halo_tiny.json"

Arch = Literal["llama", "qwen2"]
SizeName = Literal["tiny", "small"]

#: Named sizes. ``tiny`` (~140K parameters) is for unit tests: a forward pass costs microseconds
#: and vocab/hidden size dominate CPU time. ``small`` (~25M parameters) is big enough for
#: throughput benchmarks to measure something other than Python overhead.
SIZE_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {
        "vocab_size": 512,
        "hidden_size": 64,
        "num_layers": 2,
        "heads": 4,
        "kv_heads": 2,
        "intermediate": 128,
        "max_position": 512,
    },
    "small": {
        "vocab_size": 1024,
        "hidden_size": 512,
        "num_layers": 8,
        "heads": 8,
        "kv_heads": 2,
        "intermediate": 1536,
        "max_position": 2048,
    },
}

# 256 byte symbols + the 3 specials: the smallest vocabulary a byte-level BPE can have.
_MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


class TinySpec(BaseModel):
    """Everything that determines a tiny model's files (the cache key is derived from it).

    Build one from a named size with :meth:`TinySpec.preset`, e.g.
    ``TinySpec.preset("tiny", arch="qwen2", hidden_size=32)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Arch = Field("llama", description="Model family: 'llama' (LlamaFor*) or 'qwen2' (Qwen2For*).")
    seq_cls: bool = Field(
        False,
        description="Build *ForSequenceClassification with num_labels=1 (a reward-model head) instead of *ForCausalLM.",
    )
    vocab_size: int = Field(512, ge=_MIN_VOCAB, description="Tokenizer vocabulary size, specials included.")
    hidden_size: int = Field(64, gt=0, description="Model width (embedding size).")
    num_layers: int = Field(2, gt=0, description="Number of decoder layers.")
    heads: int = Field(4, gt=0, description="Attention heads; must divide hidden_size.")
    kv_heads: int = Field(2, gt=0, description="Key/value heads (GQA); must divide heads.")
    intermediate: int = Field(128, gt=0, description="MLP intermediate size.")
    max_position: int = Field(512, gt=0, description="Maximum sequence length (also the tokenizer's model_max_length).")
    seed: int = Field(0, ge=0, description="Seed of the torch RNG the weights are drawn from.")

    @model_validator(mode="after")
    def _check_shapes(self) -> TinySpec:
        if self.hidden_size % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide hidden_size ({self.hidden_size})")
        if self.heads % self.kv_heads:
            raise ValueError(f"kv_heads ({self.kv_heads}) must divide heads ({self.heads})")
        if (self.hidden_size // self.heads) % 2:
            # RoPE rotates pairs of dimensions; an odd head_dim fails deep inside the model.
            raise ValueError(f"head dim hidden_size/heads = {self.hidden_size // self.heads} must be even (RoPE)")
        return self

    @classmethod
    def preset(cls, size: SizeName = "tiny", **overrides: Any) -> TinySpec:
        """Spec for the named ``size`` (``"tiny"`` or ``"small"``), with any field overridden."""
        if size not in SIZE_PRESETS:
            raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZE_PRESETS)}")
        return cls(**{**SIZE_PRESETS[size], **overrides})

    def to_config(self, *, eos_token_id: int = EOS_TOKEN_ID, pad_token_id: int = PAD_TOKEN_ID) -> PretrainedConfig:
        """The transformers config (``LlamaConfig`` / ``Qwen2Config``) a model of this spec uses."""
        config_cls = _model_classes(self)[0]
        kwargs: dict[str, Any] = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "max_position_embeddings": self.max_position,
            "bos_token_id": None,
            "eos_token_id": eos_token_id,
            "pad_token_id": pad_token_id,
            # Untied: LoRA/merge tests should not depend on a shared embedding/lm_head tensor.
            "tie_word_embeddings": False,
            "dtype": "float32",
        }
        if self.seq_cls:
            # A single scalar score per sequence: what TRL's reward trainer and our RM recipe expect.
            kwargs["num_labels"] = 1
        return config_cls(**kwargs)

    def num_parameters(self) -> int:
        """Parameter count of a model of this spec, computed on the meta device (no memory, ~ms)."""
        import torch

        with torch.device("meta"):
            model = _model_classes(self)[1](self.to_config())
        return sum(p.numel() for p in model.parameters())

    def cache_key(self) -> str:
        """Hex digest that changes whenever the files built from this spec could change.

        Covers the spec, :data:`KIT_VERSION`, the shipped corpus and the versions of the libraries
        that write the files (a different transformers may write a different config or init).
        """
        payload = {
            "spec": self.model_dump(mode="json"),
            "kit": KIT_VERSION,
            "corpus": _corpus_sha256(),
            "versions": {name: _version(name) for name in ("torch", "transformers", "tokenizers", "safetensors")},
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def dir_name(self) -> str:
        """Readable, unique directory name for the cache, e.g. ``llama-causal-h64-l2-v512-1a2b3c4d5e6f``."""
        head = "seqcls" if self.seq_cls else "causal"
        return f"{self.arch}-{head}-h{self.hidden_size}-l{self.num_layers}-v{self.vocab_size}-{self.cache_key()[:12]}"


def corpus_path() -> Path:
    """Path of the shipped tokenizer training corpus (``halo_models/data/corpus.txt``)."""
    return Path(str(resources.files("halo_models") / "data" / "corpus.txt"))


def default_cache_root() -> Path:
    """Where :func:`make_tiny_cached` keeps builds when no ``cache_root`` is given.

    ``$HALO_TINY_CACHE`` if set, else ``$XDG_CACHE_HOME/halo-forge/tiny``, else
    ``~/.cache/halo-forge/tiny``.
    """
    if env := os.environ.get("HALO_TINY_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "halo-forge" / "tiny"


def build_tokenizer(
    out_dir: str | os.PathLike[str] | None = None,
    vocab_size: int = SIZE_PRESETS["tiny"]["vocab_size"],
    *,
    model_max_length: int = SIZE_PRESETS["tiny"]["max_position"],
) -> PreTrainedTokenizerFast:
    """Train the tiny byte-level BPE tokenizer and return it (saved to ``out_dir`` if given).

    The tokenizer has exactly ``vocab_size`` entries (ids 0-2 are ``<|endoftext|>``,
    ``<|im_start|>``, ``<|im_end|>``), pad ``<|endoftext|>``, eos ``<|im_end|>``, no bos, and the
    :data:`CHATML_TEMPLATE` chat template. Byte-level means any text round-trips:
    ``tok.decode(tok.encode(text)) == text``. Load a saved one with
    ``AutoTokenizer.from_pretrained(out_dir)``.

    Raises ``ValueError`` when the shipped corpus cannot support ``vocab_size`` merges (the
    largest possible size is a bit over 1500).
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_trained_tokenizer_json(vocab_size))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START],
        chat_template=CHATML_TEMPLATE,
        model_max_length=model_max_length,
        # Byte-level BPE already reproduces the exact text; "cleaning up" spaces would break
        # round-trips like "a ." -> "a.".
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def build_model(
    out_dir: str | os.PathLike[str],
    arch: Arch = "llama",
    seq_cls: bool = False,
    hidden_size: int = 64,
    num_layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    max_position: int = 512,
    seed: int = 0,
    *,
    vocab_size: int = SIZE_PRESETS["tiny"]["vocab_size"],
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Write a random-weight model (and its tokenizer) into ``out_dir`` and return the path.

    ``arch`` picks ``LlamaFor*`` or ``Qwen2For*``; ``seq_cls=True`` builds
    ``*ForSequenceClassification`` with ``num_labels=1`` and ``pad_token_id`` set (so batched
    scoring finds the last real token), as reward models need. Weights are float32, saved as
    ``model.safetensors``; causal models also get a ``generation_config.json`` with eos/pad ids.

    The tokenizer is trained with ``vocab_size`` unless ``tokenizer`` is given, in which case the
    model's vocabulary is ``len(tokenizer)`` and ``vocab_size`` is ignored. ``out_dir`` is
    created if needed; existing files of the same names are overwritten.
    """
    if tokenizer is not None:
        vocab_size = len(tokenizer)
    spec = TinySpec(
        arch=arch,
        seq_cls=seq_cls,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        max_position=max_position,
        seed=seed,
    )
    return _build(spec, Path(out_dir), tokenizer)


def make_tiny(
    out_dir: str | os.PathLike[str],
    arch: Arch = "llama",
    seq_cls: bool = False,
    *,
    size: SizeName = "tiny",
    overwrite: bool = False,
    **overrides: Any,
) -> Path:
    """Build tokenizer + model of the named ``size`` into ``out_dir``; return ``out_dir``.

    This is what ``halo-forge models make-tiny [--arch llama|qwen2] [--seq-cls] OUT`` calls.
    ``overrides`` are any :class:`TinySpec` fields (``hidden_size=32``, ``seed=1``,
    ``vocab_size=300``, ...). Refuses (``FileExistsError``) to write into a non-empty directory
    unless ``overwrite=True``, so a typo cannot clobber a real model.
    """
    spec = TinySpec.preset(size, arch=arch, seq_cls=seq_cls, **overrides)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass overwrite=True to build into it anyway")
    return _build(spec, out)


def make_tiny_cached(
    cache_root: str | os.PathLike[str] | None = None,
    arch: Arch = "llama",
    seq_cls: bool = False,
    *,
    size: SizeName = "tiny",
    **overrides: Any,
) -> Path:
    """Like :func:`make_tiny`, but build at most once per spec under ``cache_root``.

    Returns ``cache_root/<spec.dir_name()>``; ``cache_root`` defaults to
    :func:`default_cache_root`. The key covers the spec, the kit version, the corpus and library
    versions (see :meth:`TinySpec.cache_key`), so changing any of them builds afresh. Safe under
    concurrency (pytest-xdist workers, parallel CI jobs): each build happens in a private temp
    directory that is renamed into place atomically, and the loser of a race discards its copy.

    Treat the returned directory as read-only: it is shared by every caller. Copy it
    (``shutil.copytree``) before modifying anything in it.
    """
    spec = TinySpec.preset(size, arch=arch, seq_cls=seq_cls, **overrides)
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    final = root / spec.dir_name()
    if (final / MANIFEST_NAME).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    # The temp dir lives under root so the final rename stays on one filesystem (atomic).
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        _build(spec, tmp)
        if final.exists() and not (final / MANIFEST_NAME).is_file():
            # Not produced by us (renames are atomic and the manifest is written last):
            # a hand-edited or half-deleted entry. Replace it.
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process renamed its identical build into place first; use that one.
            if not (final / MANIFEST_NAME).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------------------------
# internals


def _build(spec: TinySpec, out: Path, tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
    import torch
    from transformers import GenerationConfig

    if tokenizer is None:
        tokenizer = build_tokenizer(vocab_size=spec.vocab_size, model_max_length=spec.max_position)
    eos_id = _token_id(tokenizer, EOS_TOKEN)
    pad_id = _token_id(tokenizer, PAD_TOKEN)
    config = spec.to_config(eos_token_id=eos_id, pad_token_id=pad_id)
    model_cls = _model_classes(spec)[1]

    # fork_rng keeps the caller's global torch RNG untouched, so building a model inside a test
    # does not shift that test's own random draws.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = model_cls(config)
    model.eval()
    if not spec.seq_cls:
        model.generation_config = GenerationConfig(bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id)

    out.mkdir(parents=True, exist_ok=True)
    with _quiet_progress():
        model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    manifest = {
        "kit_version": KIT_VERSION,
        "spec": spec.model_dump(mode="json"),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "model_class": type(model).__name__,
    }
    # Written last: its presence marks a complete build (make_tiny_cached relies on this).
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """Id of a ChatML special in ``tokenizer``; a clear error if a custom tokenizer lacks it."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no {token!r} token; the tiny kit needs the ChatML specials")
    return token_id


def _model_classes(spec: TinySpec) -> tuple[type[PretrainedConfig], type[PreTrainedModel]]:
    """(config class, model class) for the spec's arch and head."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen2ForSequenceClassification,
    )

    if spec.arch == "llama":
        return LlamaConfig, (LlamaForSequenceClassification if spec.seq_cls else LlamaForCausalLM)
    return Qwen2Config, (Qwen2ForSequenceClassification if spec.seq_cls else Qwen2ForCausalLM)


_progress_lock = threading.Lock()
_progress_depth = 0
_progress_was_enabled = False


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide transformers' "Writing model shards" bar: one shard of a tiny model is just noise.

    The switch is process-global, so concurrent builds (threads) share one depth counter and the
    outermost one restores the user's setting.
    """
    global _progress_depth, _progress_was_enabled
    from transformers.utils import logging as hf_logging

    with _progress_lock:
        if _progress_depth == 0:
            _progress_was_enabled = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
        _progress_depth += 1
    try:
        yield
    finally:
        with _progress_lock:
            _progress_depth -= 1
            if _progress_depth == 0 and _progress_was_enabled:
                hf_logging.enable_progress_bar()


@lru_cache(maxsize=8)
def _trained_tokenizer_json(vocab_size: int) -> str:
    """Train the BPE once per vocab size and process (training is ~30-200 ms; tests build many models)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < _MIN_VOCAB:
        raise ValueError(f"vocab_size must be at least {_MIN_VOCAB} (256 bytes + specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False: offsets must cover leading spaces exactly, because the assistant mask
    # maps template character spans to tokens through them.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 byte symbols, even those absent from the corpus, so nothing is ever unknown.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = corpus_path().read_text(encoding="utf-8")
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(
            f"the shipped corpus supports at most {tok.get_vocab_size()} tokens; vocab_size={vocab_size} is too large"
        )
    return tok.to_str()


@lru_cache(maxsize=1)
def _corpus_sha256() -> str:
    return hashlib.sha256(corpus_path().read_bytes()).hexdigest()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"
