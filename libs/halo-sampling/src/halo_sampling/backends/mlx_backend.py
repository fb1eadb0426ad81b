"""Rollouts on Apple MLX through ``mlx-lm`` (Apple silicon, or MLX's Linux CPU build ``mlx[cpu]``).

Batched decoding is mlx-lm's own ``BatchGenerator`` (continuous batching with a batched KV
cache); this module adds what rollouts need on top: one sampler per sample with its own
``mx.random`` key (so a seed reproduces its completions whatever else is batched), temperature
then top-p (the same order as the other backends), stop strings on the decoded text, the
log-probabilities of sampled tokens, and versioned weight updates.

Adapters: an mlx-lm adapter directory (``adapters.safetensors``) is applied by mlx-lm; a PEFT
LoRA adapter (what trainer-torch writes) is merged into the weights here (``W += s * B @ A``), so
the same adapter serves on every backend. ``update_weights`` takes a state dict (torch tensors,
numpy arrays or ``mx.array`` under Hugging Face names), an adapter directory or a model
directory; every update replaces the weights the next ``generate`` reads — MLX keeps no other
copy (the KV cache lives only inside one ``generate`` call).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halo_common.errors import BadRequest, Unprocessable
from halo_schemas.rollout import Completion, SampleParams, SampleRequest, SampleResult

from halo_sampling.backends.base import (
    PreparedRequest,
    StopWatcher,
    VersionedWeights,
    WeightsSource,
    assemble,
    check_local_dir,
    encode_with_hf_tokenizer,
    is_local,
    is_peft_adapter,
    make_completion,
    prepare,
    safetensors_files,
)

INSTALL_HINT = "MLX is not installed here: pip install 'halo-rollout[mlx]' (Apple silicon) or 'mlx[cpu]' mlx-lm (Linux)"


def _import_mlx() -> tuple[Any, Any, Any]:
    try:
        import importlib

        import mlx.core as mx
        from mlx.utils import tree_flatten

        # The module, not the ``generate`` function mlx_lm re-exports under the same name.
        mlx_generate = importlib.import_module("mlx_lm.generate")
    except ImportError:
        raise Unprocessable(INSTALL_HINT, param="backend") from None
    return mx, tree_flatten, mlx_generate


@dataclass
class _Row:
    """One sequence being decoded (request, sample index) and its output so far."""

    req: PreparedRequest
    sample: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    stopper: StopWatcher = field(init=False)

    def __post_init__(self) -> None:
        self.stopper = StopWatcher(self.req.params.stop)


class MLXBackend(VersionedWeights):
    """Rollout backend on mlx-lm; see the module docstring."""

    name = "mlx"

    def __init__(self, *, max_batch_size: int = 64) -> None:
        self.mx, self._tree_flatten, self._gen = _import_mlx()
        self.max_batch_size = max_batch_size
        self.model: Any = None
        self.tokenizer: Any = None
        self.model_name: str | None = None
        self.model_path: Path | None = None
        self.adapter: str | None = None
        self._lock = threading.RLock()

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, max_batch_size: int = 64) -> MLXBackend:
        """Wrap an in-memory mlx-lm model and its ``TokenizerWrapper`` (e.g. a trainer-mlx policy)."""
        self = cls(max_batch_size=max_batch_size)
        self.model, self.tokenizer = model, tokenizer
        self.model_name = "in-memory"
        self._weights_in_memory(model)
        return self

    def load(self, model: str, adapter: str | None = None) -> None:
        """Load ``model`` (local HF/MLX directory or Hub id) plus an mlx-lm or PEFT adapter."""
        from mlx_lm import utils as mlx_utils

        if is_local(model):
            check_local_dir(model, "model")
        if adapter is not None:
            check_local_dir(adapter, "adapter")
        try:
            path = mlx_utils._download(model) if not Path(model).expanduser().is_dir() else Path(model).expanduser()
            mlx_adapter = adapter if adapter is not None and not is_peft_adapter(adapter) else None
            loaded = mlx_utils.load(str(path), adapter_path=mlx_adapter)
            net, tok = loaded[0], loaded[1]
        except (OSError, ValueError, KeyError) as exc:
            raise Unprocessable(f"cannot load model {model!r} with mlx-lm: {exc}", param="model") from None
        if adapter is not None and is_peft_adapter(adapter):
            self._merge_peft(net, Path(adapter))
        net.eval()
        with self._lock:
            self.model, self.tokenizer = net, tok
            self.model_name, self.model_path, self.adapter = model, Path(path), adapter
            self._weights_loaded(model, adapter)

    def close(self) -> None:
        with self._lock:
            self.model = None
            self.tokenizer = None

    # ---- versions ----------------------------------------------------------------------------

    def weights_hash(self) -> str:
        import numpy as np

        self._require_model()
        h = hashlib.sha256()
        with self._lock:
            for name, v in sorted(self._tree_flatten(self.model.parameters())):
                h.update(name.encode())
                h.update(np.asarray(v.astype(self.mx.float32)).tobytes())
        return h.hexdigest()

    # ---- generation --------------------------------------------------------------------------
    def encode(self, req: SampleRequest) -> list[int]:
        self._require_model()
        vocab = getattr(getattr(self.model, "args", None), "vocab_size", None)
        # TokenizerWrapper forwards attributes but is not callable: use the HF tokenizer it wraps.
        return encode_with_hf_tokenizer(getattr(self.tokenizer, "_tokenizer", self.tokenizer), req, vocab)

    def generate(self, requests: Sequence[SampleRequest], default: SampleParams | None = None) -> list[SampleResult]:
        self._require_model()
        with self._lock:
            prepared = prepare(requests, default, self.encode)
            done: dict[tuple[int, int], Completion] = {}
            self._generate(prepared, done)
            return assemble(prepared, done)

    def next_token_logprobs(self, token_ids: Sequence[int]) -> Any:
        import numpy as np

        mx = self.mx
        self._require_model()
        with self._lock:
            logits = self.model(mx.array([list(token_ids)]))[0, -1].astype(mx.float32)
            return np.asarray(logits - mx.logsumexp(logits, axis=-1, keepdims=True))

    def _sampler(self, params: SampleParams, seed: int) -> Callable[[Any], Any]:
        """Temperature, then top-p, then a categorical draw with this sample's own key chain."""
        mx = self.mx
        state = [mx.random.key(seed)]
        temp, top_p = params.temperature, params.top_p
        from mlx_lm.sample_utils import apply_top_p

        def sample(logprobs: Any) -> Any:
            state[0], sub = mx.random.split(state[0])
            scaled = logprobs.astype(mx.float32) * (1.0 / temp)
            scaled = scaled - mx.logsumexp(scaled, axis=-1, keepdims=True)
            if top_p < 1.0:
                scaled = apply_top_p(scaled, top_p)
            return mx.random.categorical(scaled, key=sub)

        return sample

    def _generate(self, prepared: Sequence[PreparedRequest], done: dict[tuple[int, int], Completion]) -> None:
        mx = self.mx
        tok = self.tokenizer
        eos = set(tok.eos_token_ids)
        gen = self._gen.BatchGenerator(
            self.model,
            stop_tokens=[[t] for t in sorted(eos)],
            completion_batch_size=self.max_batch_size,
            prefill_batch_size=min(self.max_batch_size, 16),
        )
        try:
            prompts, max_tokens, samplers, keys = [], [], [], []
            from mlx_lm.sample_utils import greedy_sampler as greedy

            for p in prepared:
                for j in range(p.params.n):
                    prompts.append(p.prompt_ids)
                    max_tokens.append(p.params.max_new_tokens)
                    # Greedy rows share one sampler object so an all-greedy batch is one batched argmax.
                    samplers.append(greedy if p.params.temperature == 0 else self._sampler(p.params, p.sample_seeds[j]))
                    keys.append((p, j))
            uids = gen.insert(prompts, max_tokens, samplers=samplers)
            rows = {uid: _Row(p, j) for uid, (p, j) in zip(uids, keys, strict=True)}
            remaining = set(uids)
            while remaining:
                responses = gen.next_generated()
                if not responses:
                    break
                cut: list[int] = []
                for r in responses:
                    row = rows.get(r.uid)
                    if row is None or r.uid not in remaining:
                        continue
                    row.tokens.append(int(r.token))
                    row.logprobs.append(float(r.logprobs[r.token].item()))
                    finish, stop = r.finish_reason, None
                    if finish is None and row.stopper.stops:
                        hit = row.stopper.check(tok.decode(row.tokens, skip_special_tokens=True))
                        if hit:
                            finish, stop = "stop", hit[1]
                            cut.append(r.uid)
                    if finish is not None:
                        self._finish(row, finish, stop, done)
                        remaining.discard(r.uid)
                if cut:
                    gen.remove(cut)
            if remaining:  # pragma: no cover - the generator ended early (should not happen)
                raise RuntimeError(f"mlx BatchGenerator stopped with {len(remaining)} unfinished sequences")
            mx.clear_cache()
        finally:
            gen.close()

    def _finish(self, row: _Row, finish: str, stop: str | None, done: dict[tuple[int, int], Completion]) -> None:
        p, j = row.req, row.sample
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        if stop is not None:
            text = text[: text.find(stop)]
        done[(p.index, j)] = make_completion(
            j, row.tokens, text, "stop" if finish == "stop" else "length", stop, row.logprobs, p.params.logprobs,
            p.sample_seeds[j] if p.params.temperature > 0 else None,
        )

    # ---- weight updates ----------------------------------------------------------------------
    def update_weights(self, source: WeightsSource = None) -> int:
        """Serve new weights: None (shared module changed in place), a state dict (HF names), an
        adapter directory (mlx-lm or PEFT; replaces the current adapter) or a model directory."""
        self._require_model()
        with self._lock:
            if source is None:
                pass
            elif isinstance(source, Mapping):
                self._load_state(source)
            else:
                path = check_local_dir(str(source), "source")
                if (path / "adapter_config.json").is_file() or (path / "adapters.safetensors").is_file():
                    if self.model_path is None:
                        raise Unprocessable("an in-memory MLX model cannot switch adapters: pass a state dict",
                                            param="source")
                    name, version, lineage = self.model_name, self._version, self._source
                    self.load(str(self.model_path), adapter=str(path))
                    self.model_name, self._version, self._source = name, version, lineage
                else:
                    weights: dict[str, Any] = {}
                    for f in safetensors_files(path):
                        weights.update(self.mx.load(str(f)))
                    self._load_state(weights)
            return self._weights_updated(None if source is None or isinstance(source, Mapping) else path)

    def _to_mx(self, value: Any) -> Any:
        mx = self.mx
        if isinstance(value, mx.array):
            return value
        try:
            import torch

            if isinstance(value, torch.Tensor):
                t = value.detach().to("cpu")
                if t.dtype == torch.bfloat16:  # numpy has no bfloat16
                    return mx.array(t.float().numpy()).astype(mx.bfloat16)
                return mx.array(t.numpy())
        except ImportError:  # pragma: no cover - torch is optional for MLX users
            pass
        return mx.array(value)

    def _load_state(self, state: Mapping[str, Any]) -> None:
        mx = self.mx
        weights = {k: self._to_mx(v) for k, v in state.items()}
        if hasattr(self.model, "sanitize"):
            weights = self.model.sanitize(weights)
        own = dict(self._tree_flatten(self.model.parameters()))
        unknown = [k for k in weights if k not in own]
        if unknown:
            raise BadRequest(f"update_weights: {len(unknown)} unknown parameter names, e.g. {unknown[:3]}", param="source")
        bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in weights.items() if v.shape != own[k].shape]
        if bad:
            raise BadRequest(f"update_weights: shape mismatch: {bad[:3]}", param="source")
        self.model.load_weights([(k, v.astype(own[k].dtype)) for k, v in weights.items()], strict=False)
        mx.eval(self.model.parameters())

    def _merge_peft(self, net: Any, adapter: Path) -> None:
        """Merge a PEFT LoRA adapter into ``net``'s weights: ``W += scaling * B @ A``."""
        mx = self.mx
        cfg = json.loads((adapter / "adapter_config.json").read_text())
        if cfg.get("peft_type") != "LORA" or cfg.get("use_dora"):
            raise Unprocessable(f"the mlx backend merges plain PEFT LoRA adapters only (got {cfg.get('peft_type')}"
                                f"{', DoRA' if cfg.get('use_dora') else ''})", param="adapter")
        files = sorted(adapter.glob("adapter_model*.safetensors"))
        if not files:
            raise Unprocessable(f"no adapter_model.safetensors in {adapter}", param="adapter")
        raw: dict[str, Any] = {}
        for f in files:
            raw.update(mx.load(str(f)))
        rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
        own = dict(self._tree_flatten(net.parameters()))
        updates: dict[str, Any] = {}
        for key, a in raw.items():
            if ".lora_A." not in key:
                continue
            module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
            b = raw.get(key.replace(".lora_A.", ".lora_B."))
            target = f"{module}.weight"
            if b is None or target not in own:
                raise Unprocessable(f"adapter key {key} has no matching weight {target} in the model", param="adapter")
            if f"{module}.scales" in own:
                raise Unprocessable("cannot merge a PEFT adapter into a quantized MLX model", param="adapter")
            leaf = module.rsplit(".", 1)[-1]
            r = next((v for k, v in rank_pattern.items() if module.endswith(k) or leaf == k), cfg.get("r", a.shape[0]))
            alpha = next((v for k, v in alpha_pattern.items() if module.endswith(k) or leaf == k), cfg.get("lora_alpha", r))
            scaling = alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r
            w = own[target]
            delta = (b.astype(mx.float32) @ a.astype(mx.float32)) * scaling
            updates[target] = (w.astype(mx.float32) + delta).astype(w.dtype)
        for key, v in raw.items():  # modules_to_save: full replacements
            if ".lora_" in key:
                continue
            name = key.removeprefix("base_model.model.").replace(".modules_to_save.default", "").replace(
                ".modules_to_save", "")
            if name not in own:
                raise Unprocessable(f"adapter key {key} matches no model weight", param="adapter")
            updates[name] = v.astype(own[name].dtype)
        if not updates:
            raise Unprocessable(f"adapter {adapter} has no LoRA weights", param="adapter")
        net.load_weights(list(updates.items()), strict=False)
        mx.eval(net.parameters())

    def _require_model(self) -> None:
        if self.model is None:
            raise Unprocessable("no model loaded: call load() first", param="model")
