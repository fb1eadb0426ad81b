"""Rollouts on vLLM (CUDA / ROCm): continuous batching, paged KV cache, LoRA serving.

Import-gated: building :class:`VLLMBackend` where vLLM is not installed raises
``Unprocessable("vLLM is not installed here: …")`` naming the extra to install, so the service and
CLI answer with one clear line instead of an ImportError.

Same semantics as the other backends (see ``base``): prompts are tokenized by us (chat template
included) and passed as token ids; sample ``j`` of a request becomes its own vLLM request with
``n=1`` and ``seed=derive_seed(seed, j)`` (vLLM's prefix cache makes the repeated prompt cheap), so
a seed reproduces its completions whatever else is batched; ``logprob_sum`` is vLLM's cumulative
log-prob of the sampled tokens under the raw model distribution (``logprobs_mode="raw_logprobs"``).

Freshness — vLLM holds its own copy of the weights and caches KV blocks across requests (prefix
caching), so a weight update here does two things, always:

1. new weights: a state dict or model directory is pushed with the model runner's
   ``load_weights`` (the in-process engine, the way TRL's colocate mode does it); an adapter
   directory gets a new ``LoRARequest`` with a fresh integer id (vLLM caches adapters by id, so
   reusing the id would serve the old adapter);
2. ``reset_prefix_cache()``: KV blocks computed with the old weights are never reused.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from halo_common.errors import BadRequest, Unprocessable
from halo_schemas.rollout import Completion, SampleParams, SampleRequest, SampleResult

from halo_sampling.backends.base import (
    PreparedRequest,
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

INSTALL_HINT = "vLLM is not installed here: pip install 'halo-rollout[vllm]' on a CUDA/ROCm machine"

_lora_ids = itertools.count(1)


def import_vllm() -> Any:
    """The ``vllm`` module, or Unprocessable with the install hint."""
    try:
        import vllm
    except ImportError:
        raise Unprocessable(INSTALL_HINT, param="backend") from None
    return vllm


class VLLMBackend(VersionedWeights):
    """Rollout backend on vLLM's offline ``LLM`` engine; see the module docstring."""

    name = "vllm"

    def __init__(
        self,
        *,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        dtype: str = "auto",
        max_lora_rank: int = 64,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        max_batch_size: int = 256,
        max_logprobs: int = 20,
    ) -> None:
        self.vllm = import_vllm()
        self.max_logprobs = max_logprobs
        self.kwargs: dict[str, Any] = {
            "gpu_memory_utilization": gpu_memory_utilization,
            "dtype": dtype,
            "enable_prefix_caching": enable_prefix_caching,
            "seed": seed,
            "max_num_seqs": max_batch_size,
            "max_logprobs": max_logprobs,
        }
        if max_model_len:
            self.kwargs["max_model_len"] = max_model_len
        self.max_lora_rank = max_lora_rank
        self.llm: Any = None
        self.tokenizer: Any = None
        self.model_name: str | None = None
        self.adapter: str | None = None
        self.lora_request: Any = None
        self._lock = threading.RLock()

    def load(self, model: str, adapter: str | None = None) -> None:
        if is_local(model):
            check_local_dir(model, "model")
        if adapter is not None:
            check_local_dir(adapter, "adapter")
            if not is_peft_adapter(adapter):
                raise Unprocessable(f"{adapter} is not a PEFT adapter; vLLM serves PEFT LoRA adapters", param="adapter")
        # The engine core in this process, so update_weights can reach the model runner directly.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        kwargs = dict(self.kwargs, model=model, enable_lora=adapter is not None)
        if adapter is not None:
            kwargs["max_lora_rank"] = self.max_lora_rank
        with self._lock:
            if self.llm is not None:
                self.close()  # free the GPU first: two engines rarely fit side by side
            try:
                llm = self._build(kwargs)
            except (OSError, ValueError) as exc:
                raise Unprocessable(f"cannot load model {model!r} with vLLM: {exc}", param="model") from None
            self.llm = llm
            self.tokenizer = llm.get_tokenizer()
            self.model_name, self.adapter = model, adapter
            self.lora_request = self._lora(adapter) if adapter else None
            self._weights_loaded(model, adapter)

    def _build(self, kwargs: dict[str, Any]) -> Any:
        try:  # log-probs of the model itself, not of the temperature-scaled distribution
            return self.vllm.LLM(**kwargs, logprobs_mode="raw_logprobs")
        except TypeError:  # older vLLM without logprobs_mode: raw log-probs are its only mode
            return self.vllm.LLM(**kwargs)

    def _lora(self, path: str) -> Any:
        from vllm.lora.request import LoRARequest

        lora_id = next(_lora_ids)
        return LoRARequest(f"adapter-{lora_id}", lora_id, str(path))

    def close(self) -> None:
        with self._lock:
            self.llm = None
            self.tokenizer = None
        try:
            import gc

            import torch

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

    # ---- versions ----------------------------------------------------------------------------

    def weights_hash(self) -> str:
        import hashlib

        import torch

        h = hashlib.sha256()
        with self._lock:
            for name, t in sorted(self._runner_model().state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    # ---- generation --------------------------------------------------------------------------
    def encode(self, req: SampleRequest) -> list[int]:
        self._require_model()
        return encode_with_hf_tokenizer(self.tokenizer, req)

    def generate(self, requests: Sequence[SampleRequest], default: SampleParams | None = None) -> list[SampleResult]:
        self._require_model()
        SamplingParams = self.vllm.SamplingParams
        with self._lock:
            prepared = prepare(requests, default, self.encode)
            prompts: list[Any] = []
            sampling: list[Any] = []
            keys: list[tuple[PreparedRequest, int]] = []
            for p in prepared:
                for j in range(p.params.n):
                    prompts.append({"prompt_token_ids": p.prompt_ids})
                    sampling.append(SamplingParams(
                        n=1,
                        temperature=p.params.temperature,
                        top_p=p.params.top_p,
                        max_tokens=p.params.max_new_tokens,
                        stop=list(p.params.stop) or None,
                        seed=p.sample_seeds[j] if p.params.temperature > 0 else None,
                        logprobs=0,  # the sampled token's log-prob only
                        skip_special_tokens=True,
                    ))
                    keys.append((p, j))
            outputs = self.llm.generate(prompts, sampling, lora_request=self.lora_request, use_tqdm=False)
            done: dict[tuple[int, int], Completion] = {}
            for (p, j), out in zip(keys, outputs, strict=True):
                o = out.outputs[0]
                token_lps = _token_logprobs(o)
                stop = o.stop_reason if isinstance(o.stop_reason, str) else None
                done[(p.index, j)] = make_completion(
                    j, list(o.token_ids), o.text, "length" if o.finish_reason == "length" else "stop", stop,
                    token_lps, p.params.logprobs, p.sample_seeds[j] if p.params.temperature > 0 else None,
                    logprob_sum=o.cumulative_logprob,
                )
            return assemble(prepared, done)

    def next_token_logprobs(self, token_ids: Sequence[int]) -> Any:
        """The top ``max_logprobs`` next-token log-probs (vLLM reports no more); the others are -inf."""
        import numpy as np

        self._require_model()
        vocab = int(getattr(self.llm.llm_engine.model_config.hf_config, "vocab_size", 0) or len(self.tokenizer))
        sp = self.vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=min(vocab, self.max_logprobs))
        out = self.llm.generate([{"prompt_token_ids": list(token_ids)}], sp, lora_request=self.lora_request,
                                use_tqdm=False)[0].outputs[0]
        lp = np.full(vocab, -np.inf, dtype=np.float32)
        for tid, entry in (out.logprobs[0] or {}).items():
            lp[int(tid)] = float(getattr(entry, "logprob", entry))
        return lp

    # ---- weight updates ----------------------------------------------------------------------
    def update_weights(self, source: WeightsSource = None) -> int:
        """Push new weights into the engine (see the module docstring) and reset the prefix cache."""
        self._require_model()
        with self._lock:
            if source is None:
                raise BadRequest("vLLM holds its own copy of the weights: pass a state dict, an adapter directory "
                                 "or a model directory to update_weights", param="source")
            if isinstance(source, Mapping):
                self._push(source.items())
            else:
                path = check_local_dir(str(source), "source")
                if (path / "adapter_config.json").is_file():
                    if not is_peft_adapter(path):
                        raise Unprocessable(f"{path} is not a PEFT adapter", param="source")
                    if self.lora_request is None:
                        # The engine was built without LoRA support: rebuild it with LoRA enabled.
                        name, version = self.model_name, self._version
                        assert name is not None
                        self.load(name, adapter=str(path))
                        self.model_name, self._version = name, version
                    else:
                        self.lora_request = self._lora(str(path))
                    self.adapter = str(path)
                else:
                    from safetensors.torch import load_file

                    for f in safetensors_files(path):
                        self._push(load_file(str(f)).items())
            self.llm.reset_prefix_cache()
            return self._weights_updated(None if source is None or isinstance(source, Mapping) else path)

    def _runner_model(self) -> Any:
        """The engine's torch model, when the engine runs in this process (the layout differs across
        vLLM versions: try the known paths)."""
        engine = self.llm.llm_engine
        paths = (
            ("model_executor", "driver_worker", "model_runner", "model"),
            ("model_executor", "driver_worker", "worker", "model_runner", "model"),
            ("engine_core", "engine_core", "model_executor", "driver_worker", "worker", "model_runner", "model"),
        )
        for path in paths:
            obj: Any = engine
            try:
                for attr in path:
                    obj = getattr(obj, attr)
                return obj
            except AttributeError:
                continue
        raise Unprocessable(
            "cannot reach vLLM's model runner in this process (set VLLM_ENABLE_V1_MULTIPROCESSING=0 before loading)",
            param="source")

    def _push(self, items: Any) -> None:
        try:
            model = self._runner_model()
        except Unprocessable:
            # The engine runs in worker processes: ship the tensors to every worker through vLLM's RPC.
            self.llm.collective_rpc(_load_weights_on_worker, args=(list(items),))
            return
        for name, tensor in items:
            model.load_weights([(name, tensor)])

    def _require_model(self) -> None:
        if self.llm is None:
            raise Unprocessable("no model loaded: call load() first", param="model")


def _load_weights_on_worker(worker: Any, weights: list[tuple[str, Any]]) -> None:
    """Runs inside each vLLM worker (``LLM.collective_rpc``): load the pushed tensors into its model."""
    worker.model_runner.model.load_weights(weights)


def _token_logprobs(o: Any) -> list[float] | None:
    """Log-prob of each sampled token from a vLLM CompletionOutput (None when not reported)."""
    if not o.logprobs:
        return None
    out = []
    for tid, step in zip(o.token_ids, o.logprobs, strict=False):
        entry = step.get(tid) if step else None
        out.append(float(getattr(entry, "logprob", 0.0)) if entry is not None else 0.0)
    return out
