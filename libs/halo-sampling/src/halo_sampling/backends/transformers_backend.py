"""Rollouts with plain transformers (every torch backend: CUDA, ROCm, MPS, CPU).

Our own decode loop over the model's forward, not ``model.generate``, because rollouts need what
``generate`` cannot give in one call: per-request temperature / top-p / max tokens / stop strings in
one batch, a private RNG per sample (so a seed reproduces its completions whatever else is batched),
and the log-probabilities of the sampled tokens. What it does:

* left-padded batches of up to ``max_batch_size`` sequences, prompts sorted by length so padding
  is small; each prompt is prefilled once and its KV cache copied to its ``n`` samples;
* a ``DynamicCache`` (KV cache) for decoding; finished rows are dropped from the batch (and
  cache) so short completions stop costing compute;
* greedy at temperature 0, else temperature then top-p, sampled by inverse CDF from one uniform
  draw of the sample's own ``torch.Generator`` per token.

In-process use (a trainer in the same process, e.g. GRPO)::

    backend = TransformersBackend.from_model(policy, tokenizer)   # wraps it, no copy
    results = backend.generate(requests)
    optimizer.step()
    backend.update_weights()            # the shared module changed in place: bump the version

``update_weights`` also takes a state dict (copied in place into the parameters), a PEFT adapter
directory or a model directory (``*.safetensors``). There is no cache of weights anywhere else
(no merged copy, no compiled graph, no KV cache kept between calls), so the next ``generate``
always runs on the weights just written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
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
    eos_ids_of,
    is_local,
    is_peft_adapter,
    make_completion,
    prepare,
    safetensors_files,
)

# adapter_config.json keys that decide the adapter's structure or scaling: when they are equal, a new
# adapter's weights can be copied into the loaded one in place.
_STRUCTURAL_ADAPTER_KEYS = (
    "peft_type", "task_type", "r", "lora_alpha", "target_modules", "exclude_modules", "modules_to_save",
    "use_rslora", "use_dora", "rank_pattern", "alpha_pattern", "fan_in_fan_out", "bias", "lora_bias",
    "layers_to_transform", "layers_pattern", "trainable_token_indices",
)


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


class _Row:
    """One sequence being decoded: (request, sample) plus its sampler state and output so far."""

    __slots__ = ("req", "sample", "params", "gen", "max_new", "tokens", "logprobs", "stop", "finish", "stopper")

    def __init__(self, req: PreparedRequest, sample: int) -> None:
        self.req = req
        self.sample = sample
        self.params = req.params
        self.gen: torch.Generator | None = None
        if req.params.temperature > 0:
            # A CPU generator on every device: one cheap scalar draw per token, and the same seed
            # gives the same uniforms on CUDA, MPS and CPU.
            self.gen = torch.Generator()
            self.gen.manual_seed(req.sample_seeds[sample])
        self.max_new = req.params.max_new_tokens
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.stop: str | None = None
        self.finish: str | None = None
        self.stopper = StopWatcher(req.params.stop)


class TransformersBackend(VersionedWeights):
    """Rollout backend on transformers; see the module docstring."""

    name = "transformers"

    def __init__(
        self,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_batch_size: int = 64,
        trust_remote_code: bool = False,
    ) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
        self.max_batch_size = max_batch_size
        self.trust_remote_code = trust_remote_code
        self.model: Any = None
        self.tokenizer: Any = None
        self.model_name: str | None = None
        self.adapter: str | None = None
        self.owns_model = True
        # One lock for generate and update: an update waits for the batch in flight, and a result
        # always reports the version of the weights that produced it.
        self._lock = threading.RLock()

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, max_batch_size: int = 64) -> TransformersBackend:
        """Wrap an in-memory (possibly PEFT) causal LM without copying it. The caller keeps training
        it; call :meth:`update_weights` (no argument) after each optimizer step to bump the version."""
        self = cls(device=next(model.parameters()).device, max_batch_size=max_batch_size)
        self.model, self.tokenizer = model, tokenizer
        self.model_name = str(getattr(getattr(model, "config", None), "name_or_path", "") or "in-memory")
        self.owns_model = False
        self._weights_in_memory(model)
        return self

    def load(self, model: str, adapter: str | None = None) -> None:
        """Load ``model`` (Hub id or local HF directory) and, optionally, a PEFT adapter directory."""
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        if is_local(model):
            check_local_dir(model, "model")
        if adapter is not None:
            check_local_dir(adapter, "adapter")
            if not is_peft_adapter(adapter):
                raise Unprocessable(
                    f"{adapter} is not a PEFT adapter (no adapter_config.json with peft_type); the transformers "
                    "backend serves PEFT adapters (mlx-lm adapters: use backend 'mlx')", param="adapter")
        hf_logging.disable_progress_bar()
        dtype = self.dtype or default_dtype(self.device)
        try:
            tok = AutoTokenizer.from_pretrained(model, trust_remote_code=self.trust_remote_code)
            net: Any = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise Unprocessable(f"cannot load model {model!r}: {exc}", param="model") from None
        net.to(self.device)
        if adapter is not None:
            from peft import PeftModel

            try:
                net = PeftModel.from_pretrained(net, adapter, is_trainable=False)
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise Unprocessable(f"cannot apply adapter {adapter!r} to {model!r}: {exc}", param="adapter") from None
        net.eval()
        with self._lock:
            self.model, self.tokenizer = net, tok
            self.model_name, self.adapter = model, adapter
            self.owns_model = True
            self._weights_loaded(model, adapter)

    def close(self) -> None:
        with self._lock:
            self.model = None
            self.tokenizer = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- versions ----------------------------------------------------------------------------

    def weights_hash(self) -> str:
        """sha256 over every parameter and buffer (names and bytes), in name order."""
        self._require_model()
        h = hashlib.sha256()
        with self._lock, torch.no_grad():
            for name, t in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    # ---- generation --------------------------------------------------------------------------
    def encode(self, req: SampleRequest) -> list[int]:
        self._require_model()
        return encode_with_hf_tokenizer(self.tokenizer, req, self._vocab_size())

    def generate(self, requests: Sequence[SampleRequest], default: SampleParams | None = None) -> list[SampleResult]:
        """Sample every request; see the module docstring for the semantics."""
        self._require_model()
        with self._lock:
            prepared = prepare(requests, default, self.encode)
            self._check_lengths(prepared)
            done: dict[tuple[int, int], Completion] = {}
            with self._eval_mode(), torch.inference_mode():
                for batch in self._batches(prepared):
                    self._generate_batch(batch, done)
            return assemble(prepared, done)

    def next_token_logprobs(self, token_ids: Sequence[int]) -> Any:
        """Log-softmax of the logits after ``token_ids`` (numpy, float32): for freshness proofs."""
        self._require_model()
        with self._lock, self._eval_mode(), torch.inference_mode():
            ids = torch.tensor([list(token_ids)], device=self.device)
            logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1).logits[0, -1]
            return torch.log_softmax(logits.float(), -1).cpu().numpy()

    def _batches(self, prepared: Sequence[PreparedRequest]) -> Iterator[list[tuple[PreparedRequest, list[int]]]]:
        """Groups of (request, sample indices) with at most max_batch_size samples per batch, longest
        prompts first so prompts of similar length share a batch (less padding)."""
        groups: list[tuple[PreparedRequest, list[int]]] = []
        for p in sorted(prepared, key=lambda p: -len(p.prompt_ids)):
            samples = list(range(p.params.n))
            for k in range(0, len(samples), self.max_batch_size):
                groups.append((p, samples[k:k + self.max_batch_size]))
        batch: list[tuple[PreparedRequest, list[int]]] = []
        rows = 0
        for g in groups:
            if batch and rows + len(g[1]) > self.max_batch_size:
                yield batch
                batch, rows = [], 0
            batch.append(g)
            rows += len(g[1])
        if batch:
            yield batch

    def _generate_batch(self, groups: list[tuple[PreparedRequest, list[int]]], done: dict[tuple[int, int], Completion]) -> None:
        from transformers import DynamicCache

        model, tok, dev = self.model, self.tokenizer, self.device
        eos = eos_ids_of(tok, getattr(model, "generation_config", None))
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else (min(eos) if eos else 0)

        # Prefill each distinct prompt once (left padded), then copy its cache row to its samples.
        width = max(len(p.prompt_ids) for p, _ in groups)
        ids = torch.full((len(groups), width), pad_id, dtype=torch.long, device=dev)
        mask = torch.zeros((len(groups), width), dtype=torch.long, device=dev)
        for i, (p, _) in enumerate(groups):
            ids[i, width - len(p.prompt_ids):] = torch.tensor(p.prompt_ids, device=dev)
            mask[i, width - len(p.prompt_ids):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        cache = out.past_key_values
        rows = [_Row(p, j) for p, samples in groups for j in samples]
        expand = torch.tensor([i for i, (_, samples) in enumerate(groups) for _ in samples], device=dev)
        logits = out.logits[:, -1, :].float()[expand]
        if len(expand) != len(groups) or bool((expand != torch.arange(len(groups), device=dev)).any()):
            cache.batch_select_indices(expand)
        mask = mask[expand]
        next_pos = pos[expand, -1] + 1

        temps = torch.tensor([r.params.temperature or 1.0 for r in rows], device=dev)
        top_ps = torch.tensor([r.params.top_p for r in rows], device=dev)
        sampled = torch.tensor([r.gen is not None for r in rows], device=dev)
        active = list(range(len(rows)))  # indices into rows, aligned with the batch dimension
        while True:
            tokens, token_lp = self._pick(logits, [rows[i] for i in active], temps, top_ps, sampled)
            keep: list[int] = []
            # One device->host copy per step (not one sync per row).
            for b, (i, t, lp) in enumerate(zip(active, tokens.tolist(), token_lp.tolist(), strict=True)):
                r = rows[i]
                r.tokens.append(t)
                r.logprobs.append(lp)
                if t in eos:
                    r.finish = "stop"
                elif r.stopper.stops and (hit := r.stopper.check(tok.decode(r.tokens, skip_special_tokens=True))):
                    r.finish, r.stop = "stop", hit[1]
                elif len(r.tokens) >= r.max_new:
                    r.finish = "length"
                if r.finish is None:
                    keep.append(b)
                else:
                    self._finish(r, done)
            if not keep:
                break
            if len(keep) < len(active):
                sel = torch.tensor(keep, device=dev)
                cache.batch_select_indices(sel)
                tokens, mask, next_pos = tokens[sel], mask[sel], next_pos[sel]
                temps, top_ps, sampled = temps[sel], top_ps[sel], sampled[sel]
                active = [active[b] for b in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                        past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1, :].float()
            next_pos = next_pos + 1

    @staticmethod
    def _pick(logits: torch.Tensor, rows: list[_Row], temps: torch.Tensor, top_ps: torch.Tensor,
              sampled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Next token per row (greedy or sampled) and its log-prob under the raw distribution."""
        raw_lp = torch.log_softmax(logits, dim=-1)
        tokens = logits.argmax(dim=-1)
        if bool(sampled.any()):
            idx = sampled.nonzero().squeeze(1)
            probs = torch.softmax(logits[idx] / temps[idx, None], dim=-1)
            # One uniform per sampled row from that row's own generator: reproducible per sample.
            u = torch.stack([torch.rand((), generator=rows[i].gen) for i in idx.tolist()]).to(logits.device)
            tp = top_ps[idx]
            if bool((tp < 1.0).any()):
                sp, order = probs.sort(dim=-1, descending=True)
                cum = sp.cumsum(dim=-1)
                # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
                sp = sp.masked_fill(cum - sp >= tp[:, None], 0.0)
                cum = sp.cumsum(dim=-1)
                pick = torch.searchsorted(cum, (u * cum[:, -1])[:, None], right=True).clamp(max=sp.shape[-1] - 1)
                # Guard against float round-off landing on a zeroed tail entry.
                pick = torch.minimum(pick, (sp > 0).sum(-1, keepdim=True) - 1)
                chosen = order.gather(1, pick).squeeze(1)
            else:
                cum = probs.cumsum(dim=-1)
                chosen = torch.searchsorted(cum, (u * cum[:, -1])[:, None], right=True).clamp(max=probs.shape[-1] - 1)
                chosen = chosen.squeeze(1)
            tokens = tokens.clone()
            tokens[idx] = chosen
        return tokens, raw_lp.gather(1, tokens[:, None]).squeeze(1)

    def _finish(self, r: _Row, done: dict[tuple[int, int], Completion]) -> None:
        text = self.tokenizer.decode(r.tokens, skip_special_tokens=True)
        if r.stop is not None:
            text = text[: text.find(r.stop)]
        done[(r.req.index, r.sample)] = make_completion(
            r.sample, r.tokens, text, r.finish or "length", r.stop, r.logprobs, r.params.logprobs,
            r.req.sample_seeds[r.sample] if r.gen is not None else None,
        )

    # ---- weight updates ----------------------------------------------------------------------
    def update_weights(self, source: WeightsSource = None) -> int:
        """Serve new weights; returns the new version.

        * ``None``: the module (shared with a trainer) was changed in place;
        * a mapping name -> tensor: copied in place into the matching parameters (HF names, or the
          names of this model's own state dict; a PEFT model also accepts base-model names);
        * a directory with ``adapter_config.json``: that PEFT adapter's weights;
        * a directory with ``*.safetensors``: those weights, copied in place.
        """
        self._require_model()
        with self._lock, torch.no_grad():
            if source is None:
                pass
            elif isinstance(source, Mapping):
                self._copy_state(source)
            else:
                path = check_local_dir(str(source), "source")
                if (path / "adapter_config.json").is_file():
                    self._load_adapter(path)
                else:
                    from safetensors.torch import load_file

                    state: dict[str, torch.Tensor] = {}
                    for f in safetensors_files(path):
                        state.update(load_file(str(f)))
                    self._copy_state(state)
            return self._weights_updated(None if source is None or isinstance(source, Mapping) else path)

    def _copy_state(self, state: Mapping[str, Any]) -> None:
        own = dict(self.model.named_parameters())
        own.update(dict(self.model.named_buffers()))
        unknown, bad_shape, plan = [], [], []
        for key, value in state.items():
            target = self._resolve_name(key, own)
            if target is None:
                unknown.append(key)
                continue
            tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
            if tuple(tensor.shape) != tuple(own[target].shape):
                bad_shape.append(f"{key}: {tuple(tensor.shape)} vs {tuple(own[target].shape)}")
                continue
            plan.append((own[target], tensor))
        if unknown:
            raise BadRequest(f"update_weights: {len(unknown)} unknown parameter names, e.g. {unknown[:3]}", param="source")
        if bad_shape:
            raise BadRequest(f"update_weights: shape mismatch: {bad_shape[:3]}", param="source")
        for param, tensor in plan:
            param.copy_(tensor.to(device=param.device, dtype=param.dtype))

    def _resolve_name(self, key: str, own: Mapping[str, Any]) -> str | None:
        """Map a state-dict key onto this model's names (plain HF names also address a PEFT-wrapped base)."""
        candidates = [key, f"base_model.model.{key}"]
        if key.endswith((".weight", ".bias")):
            stem, leaf = key.rsplit(".", 1)
            candidates += [f"{stem}.base_layer.{leaf}", f"base_model.model.{stem}.base_layer.{leaf}"]
        return next((c for c in candidates if c in own), None)

    def _load_adapter(self, path: Path) -> None:
        from peft import PeftModel
        from peft.utils import load_peft_weights, set_peft_model_state_dict

        if not is_peft_adapter(path):
            raise Unprocessable(f"{path} is not a PEFT adapter directory", param="source")
        new_cfg = json.loads((path / "adapter_config.json").read_text())
        if isinstance(self.model, PeftModel):
            name = self.model.active_adapter
            cur_cfg = self.model.peft_config[name].to_dict()
            if _same_structure(cur_cfg, new_cfg):
                weights = load_peft_weights(str(path), device=str(self.device))
                result = set_peft_model_state_dict(self.model, weights, adapter_name=name)
                unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k or "modules_to_save" in k]
                if unexpected:
                    raise Unprocessable(f"adapter {path} does not fit the loaded one: unexpected {unexpected[:3]}",
                                        param="source")
                self.adapter = str(path)
                return
            if not self.owns_model:
                raise Unprocessable(
                    f"adapter {path} has a different structure (rank, targets or scaling) than the in-memory model's; "
                    "a shared model is never rebuilt — load the new adapter into a backend of its own", param="source")
            base = self.model.unload()
        elif not self.owns_model:
            raise Unprocessable("the shared in-memory model has no adapter to update; pass a state dict instead",
                                param="source")
        else:
            base = self.model
        self.model = PeftModel.from_pretrained(base, str(path), is_trainable=False).eval()
        self.adapter = str(path)

    # ---- helpers -----------------------------------------------------------------------------
    def _require_model(self) -> None:
        if self.model is None:
            raise Unprocessable("no model loaded: call load() first", param="model")

    def _vocab_size(self) -> int | None:
        cfg = getattr(self.model, "config", None)
        return getattr(cfg, "vocab_size", None)

    def _check_lengths(self, prepared: Sequence[PreparedRequest]) -> None:
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        if not limit:
            return
        for p in prepared:
            if len(p.prompt_ids) + p.params.max_new_tokens > limit:
                raise BadRequest(
                    f"requests[{p.index}]: prompt ({len(p.prompt_ids)} tokens) + max_new_tokens "
                    f"({p.params.max_new_tokens}) exceeds the model's context of {limit} tokens",
                    param=f"requests[{p.index}].params.max_new_tokens")

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Dropout off while sampling; a shared (training) model gets its mode back afterwards."""
        was_training = bool(self.model.training)
        self.model.eval()
        try:
            yield
        finally:
            if was_training:
                self.model.train()


def _same_structure(cur: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    def norm(v: Any) -> Any:
        if hasattr(v, "value"):  # enums (peft_type, task_type)
            return v.value
        if isinstance(v, set | tuple | list):
            return sorted(str(x) for x in v)  # target_modules is a set: its JSON order is arbitrary
        return v

    keys = [k for k in _STRUCTURAL_ADAPTER_KEYS if k in cur or k in new]
    return all(norm(cur.get(k)) == norm(new.get(k)) for k in keys)
