"""vLLM backend: the clear gate where vLLM is not installed, and (with a recording stand-in for the
``vllm`` module, since no GPU is here) the mapping of our requests and weight updates onto vLLM's
API — per-sample seeds, stop strings, LoRA ids that change with every adapter, and a prefix-cache
reset after every update. The real engine runs under the ``gpu`` marker on a CUDA machine."""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from halo_common.errors import BadRequest, Unprocessable
from halo_sampling.backends import make_backend, resolve_backend
from halo_sampling.backends.base import derive_seed
from halo_schemas.rollout import SampleParams, SampleRequest

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_vllm_backend_is_gated_with_an_install_hint() -> None:
    with pytest.raises(Unprocessable) as err:
        make_backend("vllm")
    assert err.value.message == "vLLM is not installed here: pip install 'halo-rollout[vllm]' on a CUDA/ROCm machine"
    assert err.value.param == "backend" and err.value.code == 422


def test_auto_picks_transformers_on_a_cpu_machine() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert resolve_backend("auto") == "transformers"
    with pytest.raises(BadRequest, match="unknown rollout backend 'tpu'"):
        resolve_backend("tpu")


# ---- a recording stand-in for the vllm module -------------------------------------------------------
@dataclass
class FakeSamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: list[str] | None = None
    seed: int | None = None
    logprobs: int | None = None
    skip_special_tokens: bool = True


@dataclass
class FakeLogprob:
    logprob: float


@dataclass
class FakeCompletion:
    text: str
    token_ids: list[int]
    cumulative_logprob: float
    logprobs: list[dict[int, FakeLogprob]]
    finish_reason: str
    stop_reason: Any = None


@dataclass
class FakeRunnerModel:
    loaded: list[str] = field(default_factory=list)

    def load_weights(self, weights: list[tuple[str, Any]]) -> None:
        self.loaded += [name for name, _ in weights]


class FakeLLM:
    instances: list[FakeLLM] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: list[tuple[list[Any], list[FakeSamplingParams], Any]] = []
        self.resets = 0
        self.runner = FakeRunnerModel()
        worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(model=self.runner))
        self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(driver_worker=worker))
        FakeLLM.instances.append(self)

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def generate(self, prompts: list[Any], params: list[FakeSamplingParams], lora_request: Any = None,
                 use_tqdm: bool = True) -> list[Any]:
        self.calls.append((prompts, params, lora_request))
        outs = []
        for _prompt, sp in zip(prompts, params, strict=True):
            ids = [7, 8, 9][: sp.max_tokens]
            stopped = bool(sp.stop)
            outs.append(types.SimpleNamespace(outputs=[FakeCompletion(
                text="abc" if not stopped else "a", token_ids=ids, cumulative_logprob=-1.5,
                logprobs=[{t: FakeLogprob(-0.5)} for t in ids],
                finish_reason="stop" if stopped else "length", stop_reason=sp.stop[0] if stopped else None)]))
        return outs

    def reset_prefix_cache(self) -> bool:
        self.resets += 1
        return True


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> type[FakeLLM]:
    from transformers import AutoTokenizer

    vllm = types.ModuleType("vllm")
    lora = types.ModuleType("vllm.lora")
    lora_request = types.ModuleType("vllm.lora.request")

    @dataclass
    class LoRARequest:
        lora_name: str
        lora_int_id: int
        lora_path: str

    lora_request.LoRARequest = LoRARequest  # type: ignore[attr-defined]
    FakeLLM.tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # type: ignore[attr-defined]
    FakeLLM.instances = []
    vllm.LLM = FakeLLM  # type: ignore[attr-defined]
    vllm.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    for name, mod in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", lora_request)):
        monkeypatch.setitem(sys.modules, name, mod)
    return FakeLLM


def test_requests_map_to_one_seeded_vllm_request_per_sample(fake_vllm: type[FakeLLM], tiny_model_dir: Path) -> None:
    be = make_backend("vllm")
    be.load(str(tiny_model_dir))
    llm = fake_vllm.instances[-1]
    assert llm.kwargs["model"] == str(tiny_model_dir) and llm.kwargs["logprobs_mode"] == "raw_logprobs"
    params = SampleParams(n=3, temperature=0.8, top_p=0.9, max_new_tokens=3, seed=4, stop=["b"], logprobs=True)
    res = be.generate([SampleRequest(prompt="hello", params=params), SampleRequest(prompt="x")],
                      SampleParams(temperature=0, max_new_tokens=2))
    prompts, sps, lora = llm.calls[-1]
    assert len(prompts) == 4 and lora is None
    assert prompts[0] == {"prompt_token_ids": FakeLLM.tokenizer("hello")["input_ids"]}
    assert [sp.seed for sp in sps[:3]] == [derive_seed(4, j) for j in range(3)] and sps[3].seed is None
    assert all(sp.n == 1 and sp.stop == ["b"] and sp.top_p == 0.9 and sp.logprobs == 0 for sp in sps[:3])
    assert sps[3].temperature == 0 and sps[3].max_tokens == 2 and sps[3].stop is None
    c = res[0].completions[2]
    assert c.index == 2 and c.finish_reason == "stop" and c.stop == "b" and c.text == "a"
    assert c.logprob_sum == -1.5 and c.token_logprobs == [-0.5, -0.5, -0.5] and c.seed == derive_seed(4, 2)
    assert res[1].completions[0].finish_reason == "length" and res[1].completions[0].token_logprobs is None


def test_every_update_pushes_weights_and_resets_the_prefix_cache(
    fake_vllm: type[FakeLLM], tiny_model_dir: Path, tmp_path: Path, adapter_factory  # noqa: ANN001
) -> None:
    import torch

    be = make_backend("vllm")
    be.load(str(tiny_model_dir))
    llm = fake_vllm.instances[-1]
    assert be.update_weights({"lm_head.weight": torch.zeros(2)}) == 1
    assert llm.runner.loaded == ["lm_head.weight"] and llm.resets == 1
    with pytest.raises(BadRequest, match="own copy"):
        be.update_weights(None)
    be.update_weights(tiny_model_dir)  # a model directory: every tensor of its safetensors is pushed
    assert "model.embed_tokens.weight" in llm.runner.loaded and llm.resets == 2

    # An adapter on an engine built without LoRA: rebuilt with enable_lora, then each new adapter
    # gets a new LoRA id (vLLM caches adapters by id) and the prefix cache is reset again.
    a1, a2 = adapter_factory(tmp_path / "a1", seed=1), adapter_factory(tmp_path / "a2", seed=2)
    be.update_weights(a1)
    llm2 = fake_vllm.instances[-1]
    assert llm2 is not llm and llm2.kwargs["enable_lora"] is True and be.weights_version == 3
    first = be.lora_request
    be.update_weights(a2)
    assert be.lora_request.lora_int_id != first.lora_int_id and be.lora_request.lora_path == str(a2)
    assert llm2.resets == 2 and be.weights_version == 4
    be.generate([SampleRequest(prompt="hi", params=SampleParams(max_new_tokens=1))])
    assert llm2.calls[-1][2] is be.lora_request


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed")
def test_real_vllm_matches_transformers_and_serves_updates(tiny_model_dir: Path) -> None:
    import numpy as np
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA/ROCm device")
    from halo_sampling.backends.transformers_backend import TransformersBackend

    be = make_backend("vllm", gpu_memory_utilization=0.3)
    be.load(str(tiny_model_dir))
    ref = TransformersBackend(device="cpu", dtype="float32")
    ref.load(str(tiny_model_dir))
    greedy = SampleParams(temperature=0, max_new_tokens=8)
    prompts = [SampleRequest(prompt=p) for p in ("hello", "The quick brown fox")]
    assert [r.completions[0].token_ids for r in be.generate(prompts, greedy)] == \
        [r.completions[0].token_ids for r in ref.generate(prompts, greedy)]
    ids = ref.encode(prompts[0])
    before = be.next_token_logprobs(ids)
    new_head = torch.randn(ref.model.lm_head.weight.shape, generator=torch.Generator().manual_seed(0))
    be.update_weights({"lm_head.weight": new_head.cuda()})
    ref.update_weights({"lm_head.weight": new_head})
    after = be.next_token_logprobs(ids)
    assert not np.allclose(before, after, atol=1e-2)
    top = int(np.argmax(ref.next_token_logprobs(ids)))
    assert int(np.argmax(after)) == top
