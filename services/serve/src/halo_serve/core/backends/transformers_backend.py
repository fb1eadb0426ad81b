"""Serving with plain transformers on every torch backend (CUDA, ROCm, MPS, CPU).

Continuous batching over our own decode loop (not ``model.generate``, which cannot admit or drop
sequences mid-flight):

* Sequences are grouped by adapter (``None`` = the base model); each group is one left-padded
  batch with one ``DynamicCache`` (KV cache) and a 2-D attention mask.
* A :meth:`step` first decodes one token for every running row of every group (one forward per
  group), then prefills the sequences added since the last step (one forward for all of them,
  left-padded) and merges their KV cache into their group's (left-padding the shorter of the two
  along the time axis). Positions come from the mask, so padding never shifts a sequence.
* Released and finished rows are dropped from the cache at once (``batch_select_indices``) and
  time columns that are padding in every remaining row are trimmed.
* Sampling per row: penalties on the raw logits, greedy at temperature 0, else temperature then
  top-p, drawn from the row's own ``torch.Generator`` (seeded), so a seed reproduces a sequence
  whatever else is batched with it.

LoRA adapters: the first adapter wraps the base in a ``PeftModel``; later ones are
``load_adapter``-ed into it. A group runs with its adapter active (``set_adapter``) or, for the
base, inside ``disable_adapter()``; the base weights are loaded once.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from halo_common.errors import BadRequest, NotFound, Unprocessable

# The device and dtype policy of the sampling library: serve and rollout pick the same on every host.
from halo_sampling.backends.transformers_backend import default_device, default_dtype

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
from halo_serve.core.jsonmode import json_prefix_state

log = logging.getLogger("halo_serve.transformers")


@dataclass
class _Native:
    model: Any  # PreTrainedModel or PeftModel
    tokenizer: Any
    device: torch.device
    peft: bool = False
    # transformers >= 5.2x names the KV-cache argument cache (past_key_values is deprecated).
    cache_kw: str = "past_key_values"
    token_text: dict[int, str] = field(default_factory=dict)  # per-token text cache (logprobs, JSON mode)


class TransformersBackend(ServeBackend):
    """Hugging Face checkpoints (safetensors) on torch; see the module docstring."""

    name = "transformers"
    formats = ("hf",)
    supports_adapters = True
    supports_json_mode = True

    def __init__(self, *, device: str | None = None, dtype: str | None = None, max_batch_size: int = 16,
                 trust_remote_code: bool = False) -> None:
        self.device = torch.device(device) if device else default_device()
        self.dtype = getattr(torch, dtype) if dtype and dtype != "auto" else None
        self.max_batch_size = max_batch_size
        self.trust_remote_code = trust_remote_code

    # ---- models ----------------------------------------------------------------------------------
    def load(self, source: ModelSource) -> LoadedModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = source.path
        if path.startswith((".", "/", "~")) and not Path(path).expanduser().is_dir():
            raise NotFound(f"model directory not found: {path}", param="model")
        hf_logging.disable_progress_bar()
        device = torch.device(source.options["device"]) if source.options.get("device") else self.device
        dtype_opt = source.options.get("dtype")
        dtype = getattr(torch, dtype_opt) if dtype_opt and dtype_opt != "auto" else (self.dtype or default_dtype(device))
        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=self.trust_remote_code)
            net: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise Unprocessable(f"cannot load model {path!r}: {exc}", param="model") from None
        net.to(device).eval()
        cfg = net.config
        ctx = int(getattr(cfg, "max_position_embeddings", 0) or getattr(tok, "model_max_length", 0) or 2048)
        eos: set[int] = set()
        for src in (getattr(net.generation_config, "eos_token_id", None), tok.eos_token_id):
            if isinstance(src, int):
                eos.add(src)
            elif isinstance(src, list | tuple):
                eos.update(int(x) for x in src)
        memory = sum(p.numel() * p.element_size() for p in net.parameters())
        memory += sum(b.numel() * b.element_size() for b in net.buffers())
        return LoadedModel(
            backend=self.name, source=source, context_length=ctx, vocab_size=int(cfg.vocab_size),
            eos_token_ids=frozenset(eos), memory_bytes=int(memory), max_batch_size=self.max_batch_size,
            chat_template=getattr(tok, "chat_template", None),
            native=_Native(net, tok, device, cache_kw=_cache_kw(net)),
        )

    def unload(self, model: LoadedModel) -> None:
        native: _Native = model.native
        device = native.device
        model.native = None
        del native
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def load_adapter(self, model: LoadedModel, name: str, path: str) -> None:
        from peft import PeftModel

        native: _Native = model.native
        p = Path(path).expanduser()
        if not (p / "adapter_config.json").is_file():
            raise NotFound(f"no PEFT adapter (adapter_config.json) in {path}", param="adapter")
        try:
            if not native.peft:
                native.model = PeftModel.from_pretrained(native.model, str(p), adapter_name=name, is_trainable=False)
                native.peft = True
            else:
                native.model.load_adapter(str(p), adapter_name=name, is_trainable=False)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise Unprocessable(f"cannot apply adapter {path!r} to {model.source.path!r}: {exc}",
                                param="adapter") from None
        native.model.eval()
        model.adapters[name] = str(p)
        model.memory_bytes += sum(f.stat().st_size for f in p.glob("*.safetensors"))

    def unload_adapter(self, model: LoadedModel, name: str) -> None:
        native: _Native = model.native
        if name not in model.adapters:
            raise NotFound(f"adapter {name!r} is not loaded", param="adapter")
        native.model.delete_adapter(name)
        del model.adapters[name]

    # ---- text ------------------------------------------------------------------------------------
    def tokenize(self, model: LoadedModel, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(model.native.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def detokenize(self, model: LoadedModel, token_ids: Sequence[int]) -> str:
        return model.native.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def token_strings(self, model: LoadedModel, token_ids: Sequence[int]) -> list[str]:
        native: _Native = model.native
        out = []
        for t in token_ids:
            s = native.token_text.get(t)
            if s is None:
                s = native.token_text[t] = native.tokenizer.decode([t], skip_special_tokens=False)
            out.append(s)
        return out

    def render_chat(self, model: LoadedModel, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None = None) -> str:
        tok = model.native.tokenizer
        if not getattr(tok, "chat_template", None):
            raise BadRequest("this model has no chat template: use /v1/completions with a prompt", param="messages")
        kwargs: dict[str, Any] = {"add_generation_prompt": True, "tokenize": False}
        if tools:
            kwargs["tools"] = tools
        try:
            return tok.apply_chat_template(messages, **kwargs)
        except Exception as exc:  # jinja errors (raise_exception in templates) are user input problems
            raise BadRequest(f"the chat template rejected the messages: {exc}", param="messages") from None

    # ---- generation ------------------------------------------------------------------------------
    def open_session(self, model: LoadedModel) -> GenerationSession:
        return TransformersSession(self, model)

    @torch.inference_mode()
    def score_prompt(self, model: LoadedModel, token_ids: Sequence[int], top_logprobs: int = 0,
                     adapter: str | None = None) -> PromptScore:
        native: _Native = model.native
        ids = torch.tensor([list(token_ids)], device=native.device)
        with _adapter_ctx(native, adapter):
            logits = native.model(input_ids=ids).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        lps: list[float | None] = [None]
        tops: list[list[TopLogprob] | None] = [None]
        for i in range(1, len(token_ids)):
            lps.append(float(logp[i - 1, token_ids[i]]))
            tops.append(_top(self, model, logp[i - 1], top_logprobs) if top_logprobs else None)
        return PromptScore(list(token_ids), self.token_strings(model, token_ids), lps, tops)


def _top(backend: TransformersBackend, model: LoadedModel, logp_row: torch.Tensor, k: int) -> list[TopLogprob]:
    vals, idx = torch.topk(logp_row, k)
    ids = idx.tolist()
    texts = backend.token_strings(model, ids)
    return [TopLogprob(t, s, float(v)) for t, s, v in zip(ids, texts, vals.tolist(), strict=True)]


@contextlib.contextmanager
def _adapter_ctx(native: _Native, adapter: str | None) -> Iterator[None]:
    """Run the forward with ``adapter`` active, or the bare base model for None."""
    if not native.peft:
        if adapter is not None:
            raise NotFound(f"adapter {adapter!r} is not loaded", param="model")
        yield
        return
    if adapter is None:
        with native.model.disable_adapter():
            yield
        return
    native.model.set_adapter(adapter)
    yield


class _Row:
    """One sequence in a group: its request, sampler state and output so far."""

    __slots__ = ("req", "gen", "generated", "counts", "detok", "text", "pos")

    def __init__(self, req: GenerationRequest, detok: IncrementalDetokenizer) -> None:
        self.req = req
        self.gen: torch.Generator | None = None
        if req.params.temperature > 0:
            # A CPU generator on every device: same seed -> same draws on CUDA, MPS and CPU.
            self.gen = torch.Generator()
            if req.params.seed is not None:
                self.gen.manual_seed(req.params.seed)
            else:
                self.gen.seed()
        self.generated: list[int] = []
        self.counts: dict[int, int] = {}
        self.detok = detok
        self.text = ""  # generated text so far (JSON mode checks it)
        self.pos = len(req.prompt_token_ids)  # position id of the next token fed


class _Group:
    """The running batch of one adapter: rows, their KV cache, attention mask and pending tokens."""

    def __init__(self, adapter: str | None) -> None:
        self.adapter = adapter
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [B, T] over the cache's time axis
        self.pending: torch.Tensor | None = None  # [B] last sampled token of each row, not yet in the cache


class TransformersSession(GenerationSession):
    """Continuous batching for one loaded model (see the module docstring)."""

    def __init__(self, backend: TransformersBackend, model: LoadedModel) -> None:
        self.backend = backend
        self.model = model
        self.native: _Native = model.native
        self.groups: dict[str | None, _Group] = {}
        self.waiting: list[GenerationRequest] = []

    @property
    def active(self) -> int:
        return len(self.waiting) + sum(len(g.rows) for g in self.groups.values())

    def add(self, request: GenerationRequest) -> None:
        if request.adapter is not None and request.adapter not in self.model.adapters:
            raise NotFound(f"adapter {request.adapter!r} is not loaded", param="model")
        self.waiting.append(request)

    def release(self, request_id: str) -> None:
        self.waiting = [r for r in self.waiting if r.request_id != request_id]
        for g in self.groups.values():
            idx = [i for i, r in enumerate(g.rows) if r.req.request_id == request_id]
            if idx:
                self._drop(g, idx)
                return

    def close(self) -> None:
        self.groups.clear()
        self.waiting.clear()

    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        events: list[TokenEvent] = []
        for g in list(self.groups.values()):
            if g.rows:
                events.extend(self._decode(g))
        if self.waiting:
            by_adapter: dict[str | None, list[GenerationRequest]] = {}
            for r in self.waiting:
                by_adapter.setdefault(r.adapter, []).append(r)
            self.waiting = []
            for adapter, reqs in by_adapter.items():
                events.extend(self._prefill(adapter, reqs))
        for key in [k for k, g in self.groups.items() if not g.rows]:
            del self.groups[key]
        return events

    # ---- forward passes --------------------------------------------------------------------------
    def _decode(self, g: _Group) -> list[TokenEvent]:
        assert g.mask is not None and g.pending is not None
        dev = self.native.device
        g.mask = torch.cat([g.mask, torch.ones((len(g.rows), 1), dtype=g.mask.dtype, device=dev)], dim=1)
        positions = torch.tensor([[r.pos] for r in g.rows], device=dev)
        with _adapter_ctx(self.native, g.adapter):
            out = self.native.model(input_ids=g.pending.view(-1, 1), attention_mask=g.mask, position_ids=positions,
                                    use_cache=True, **{self.native.cache_kw: g.cache})
        g.cache = _out_cache(out)
        for r in g.rows:
            r.pos += 1
        return self._sample_and_emit(g, g.rows, out.logits[:, -1, :])

    def _prefill(self, adapter: str | None, reqs: list[GenerationRequest]) -> list[TokenEvent]:
        from transformers import DynamicCache

        dev = self.native.device
        pad = self.native.tokenizer.pad_token_id
        pad = 0 if pad is None else pad
        longest = max(len(r.prompt_token_ids) for r in reqs)
        ids = torch.full((len(reqs), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(reqs), longest), dtype=torch.long)
        for i, r in enumerate(reqs):
            n = len(r.prompt_token_ids)
            ids[i, longest - n:] = torch.tensor(r.prompt_token_ids)
            mask[i, longest - n:] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with _adapter_ctx(self.native, adapter):
            out = self.native.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                    use_cache=True, **{self.native.cache_kw: DynamicCache()})
        rows = [_Row(r, IncrementalDetokenizer(self._decode_text)) for r in reqs]
        g = self.groups.get(adapter)
        if g is None or not g.rows:
            g = self.groups[adapter] = _Group(adapter)
            g.rows, g.cache, g.mask = rows, _out_cache(out), mask
            g.pending = torch.zeros(len(rows), dtype=torch.long, device=dev)
            new_rows = rows
        else:
            new_rows = rows
            self._merge(g, rows, _out_cache(out), mask)
        return self._sample_and_emit(g, new_rows, out.logits[:, -1, :])

    def _merge(self, g: _Group, rows: list[_Row], cache: Any, mask: torch.Tensor) -> None:
        """Append ``rows`` (with their prefill ``cache`` / ``mask``) to group ``g``."""
        from transformers import DynamicCache

        assert g.mask is not None and g.pending is not None
        t_old, t_new = g.mask.shape[1], mask.shape[1]
        t = max(t_old, t_new)
        layers = []
        for old_layer, new_layer in zip(g.cache.layers, cache.layers, strict=True):
            kv = []
            for a, b in ((old_layer.keys, new_layer.keys), (old_layer.values, new_layer.values)):
                kv.append(torch.cat([_left_pad(a, t), _left_pad(b, t)], dim=0))
            layers.append(tuple(kv))
        g.cache = DynamicCache(ddp_cache_data=layers)
        g.mask = torch.cat([_left_pad_mask(g.mask, t), _left_pad_mask(mask, t)], dim=0)
        g.rows = g.rows + rows
        g.pending = torch.cat([g.pending, torch.zeros(len(rows), dtype=torch.long, device=g.pending.device)])

    def _drop(self, g: _Group, idx: list[int]) -> None:
        """Remove rows ``idx`` of group ``g`` and trim all-padding time columns."""
        keep = [i for i in range(len(g.rows)) if i not in set(idx)]
        g.rows = [g.rows[i] for i in keep]
        if not keep:
            g.cache = g.mask = g.pending = None
            return
        assert g.mask is not None and g.pending is not None
        sel = torch.tensor(keep, device=g.mask.device)
        g.mask = g.mask.index_select(0, sel)
        g.pending = g.pending.index_select(0, sel)
        used = g.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        for layer in g.cache.layers:
            layer.keys = layer.keys.index_select(0, sel)[:, :, start:]
            layer.values = layer.values.index_select(0, sel)[:, :, start:]
        g.mask = g.mask[:, start:]

    # ---- sampling --------------------------------------------------------------------------------
    def _decode_text(self, ids: Sequence[int]) -> str:
        return self.native.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _sample_and_emit(self, g: _Group, rows: list[_Row], logits: torch.Tensor) -> list[TokenEvent]:
        """Pick the next token of each of ``rows`` (the last ``len(rows)`` rows of ``g``) from ``logits``."""
        logits = logits.float()
        offset = len(g.rows) - len(rows)
        events: list[TokenEvent] = []
        finished: list[int] = []
        eos = self.model.eos_token_ids
        chosen: list[int] = []
        for i, r in enumerate(rows):
            p = r.req.params
            row = logits[i]
            if (p.presence_penalty or p.frequency_penalty) and r.counts:
                ids = torch.tensor(list(r.counts), device=row.device)
                cnt = torch.tensor(list(r.counts.values()), dtype=row.dtype, device=row.device)
                row = row.clone()
                row[ids] -= p.presence_penalty + p.frequency_penalty * cnt
            # Logprobs are of the model's distribution after penalties, before ignore_eos / JSON masks.
            scored = row
            if p.ignore_eos and eos:
                row = row.clone()
                row[list(eos)] = float("-inf")
            if p.json_mode:
                token = self._json_pick(r, row, eos)
            else:
                token = _pick(row, p.temperature, p.top_p, r.gen)
            chosen.append(token)
            lp = tops = None
            if p.logprobs:
                logp = torch.log_softmax(scored, dim=-1)
                lp = float(logp[token])
                tops = _top(self.backend, self.model, logp, p.top_logprobs) if p.top_logprobs else []
            r.generated.append(token)
            r.counts[token] = r.counts.get(token, 0) + 1
            finish = None
            if token in eos and not p.ignore_eos:
                text = ""
                finish = "stop"
            else:
                text = r.detok.push(token)
                r.text += text
                if r.pos + 1 >= self.model.context_length:
                    finish = "length"
            if finish:
                finished.append(offset + i)
            events.append(TokenEvent(r.req.request_id, token, text, lp, tops, finish))  # type: ignore[arg-type]
        assert g.pending is not None
        g.pending[offset:] = torch.tensor(chosen, device=g.pending.device)
        if finished:
            self._drop(g, finished)
        return events

    def _json_pick(self, r: _Row, row: torch.Tensor, eos: frozenset[int]) -> int:
        """Sample a token that keeps the text a JSON-object prefix; EOS only once it is complete."""
        p = r.req.params
        state = json_prefix_state(r.text) if r.text.strip() else "partial"
        if state == "complete" and eos:
            return min(eos)
        order = torch.argsort(row, descending=True).tolist()
        masked = row.clone()
        # Try the sampler's choice first (keeps temperature/top-p semantics); fall back to the most
        # likely allowed token.
        for _ in range(8):
            cand = _pick(masked, p.temperature, p.top_p, r.gen)
            if self._json_ok(r, cand, eos):
                return cand
            masked[cand] = float("-inf")
        for cand in order:
            if self._json_ok(r, cand, eos):
                return cand
        return order[0]

    def _json_ok(self, r: _Row, token: int, eos: frozenset[int]) -> bool:
        if token in eos:
            return False
        piece = self.backend.token_strings(self.model, [token])[0]
        if not piece or "\ufffd" in piece:
            return False
        if not (r.text + piece).strip():
            return False  # the object must start now: whitespace-only output could run forever
        return json_prefix_state(r.text + piece) != "invalid"


def _cache_kw(net: Any) -> str:
    params = inspect.signature(net.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _pick(row: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> int:
    """Greedy at temperature 0, else temperature then top-p, sampled with ``gen``."""
    if temperature <= 0 or gen is None:
        return int(torch.argmax(row))
    probs = torch.softmax(row / temperature, dim=-1).cpu()
    if top_p < 1.0:
        sorted_p, sorted_i = torch.sort(probs, descending=True)
        keep = (sorted_p.cumsum(0) - sorted_p) < top_p
        keep[0] = True
        filtered = torch.zeros_like(probs)
        filtered[sorted_i[keep]] = sorted_p[keep]
        probs = filtered
    return int(torch.multinomial(probs, 1, generator=gen))


def _left_pad(x: torch.Tensor, t: int) -> torch.Tensor:
    """Left-pad a [B, H, T, D] cache tensor with zeros to length ``t``."""
    if x.shape[2] == t:
        return x
    pad = torch.zeros((x.shape[0], x.shape[1], t - x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device)
    return torch.cat([pad, x], dim=2)


def _left_pad_mask(m: torch.Tensor, t: int) -> torch.Tensor:
    if m.shape[1] == t:
        return m
    return torch.cat([torch.zeros((m.shape[0], t - m.shape[1]), dtype=m.dtype, device=m.device), m], dim=1)
