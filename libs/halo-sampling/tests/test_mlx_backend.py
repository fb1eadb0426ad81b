"""The MLX backend for real, on MLX's Linux CPU build: mlx-lm loads the tiny Llama checkpoint as is
(no conversion needed), decodes the same greedy tokens as transformers, reproduces seeds, applies
PEFT adapters, and serves updated weights after update_weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from halo_sampling.backends.transformers_backend import TransformersBackend
from halo_schemas.rollout import ChatTurn, SampleParams, SampleRequest
from transformers import AutoModelForCausalLM, AutoTokenizer

pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

from halo_sampling.backends.mlx_backend import MLXBackend  # noqa: E402

PROMPTS = ["The quick brown fox", "hello", "Once upon a time there was a", "def add(a, b):"]
GREEDY = SampleParams(temperature=0, max_new_tokens=10)


def reqs(*prompts: str) -> list[SampleRequest]:
    return [SampleRequest(prompt=p) for p in prompts]


def tokens(results) -> list[list[list[int]]]:  # noqa: ANN001
    return [[c.token_ids for c in r.completions] for r in results]


@pytest.fixture(scope="module")
def torch_backend(tiny_model_dir: Path) -> TransformersBackend:
    b = TransformersBackend()
    b.load(str(tiny_model_dir))
    return b


@pytest.fixture(scope="module")
def mlx_backend(tiny_model_dir: Path) -> MLXBackend:
    b = MLXBackend(max_batch_size=8)
    b.load(str(tiny_model_dir))
    return b


def test_mlx_greedy_matches_transformers(mlx_backend: MLXBackend, torch_backend: TransformersBackend) -> None:
    m = mlx_backend.generate(reqs(*PROMPTS), GREEDY)
    t = torch_backend.generate(reqs(*PROMPTS), GREEDY)
    assert tokens(m) == tokens(t)
    for a, b in zip(m, t, strict=True):
        assert a.prompt_num_tokens == b.prompt_num_tokens
        assert a.completions[0].logprob_sum == pytest.approx(b.completions[0].logprob_sum, abs=1e-3)
        assert a.completions[0].text == b.completions[0].text and a.completions[0].finish_reason == "length"
    ids = torch_backend.encode(SampleRequest(prompt="hello"))
    np.testing.assert_allclose(mlx_backend.next_token_logprobs(ids), torch_backend.next_token_logprobs(ids), atol=1e-4)
    # Chat prompts go through the same template on both backends.
    chat = [SampleRequest(messages=[ChatTurn(role="user", content="hi")])]
    assert tokens(mlx_backend.generate(chat, GREEDY)) == tokens(torch_backend.generate(chat, GREEDY))


def test_mlx_loads_the_tiny_qwen2_as_is_and_agrees_with_transformers(tiny_qwen2_dir: Path) -> None:
    m, t = MLXBackend(), TransformersBackend()
    m.load(str(tiny_qwen2_dir))
    t.load(str(tiny_qwen2_dir))
    assert tokens(m.generate(reqs(*PROMPTS), GREEDY)) == tokens(t.generate(reqs(*PROMPTS), GREEDY))


def test_mlx_seeds_reproduce_whatever_else_is_in_the_batch(mlx_backend: MLXBackend) -> None:
    params = SampleParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=5)
    alone = mlx_backend.generate([SampleRequest(prompt="hello", params=params)])
    mixed = mlx_backend.generate([SampleRequest(prompt="The quick brown fox", params=GREEDY),
                                  SampleRequest(prompt="hello", params=params)])
    assert tokens(alone)[0] == tokens(mixed)[1]
    assert len({tuple(t) for t in tokens(alone)[0]}) == 3
    other = mlx_backend.generate([SampleRequest(prompt="hello", params=params.model_copy(update={"seed": 6}))])
    assert tokens(other) != tokens(alone)


def test_mlx_stop_strings_and_lengths(mlx_backend: MLXBackend) -> None:
    full = mlx_backend.generate(reqs("Once upon a time there was a"), SampleParams(temperature=0, max_new_tokens=24))
    text = full[0].completions[0].text
    stop = text[5:7]
    cut = mlx_backend.generate(reqs("Once upon a time there was a"),
                               SampleParams(temperature=0, max_new_tokens=24, stop=[stop]))[0].completions[0]
    assert cut.finish_reason == "stop" and cut.stop == stop and cut.text == text[: text.find(stop)]
    assert full[0].completions[0].token_ids[: cut.num_tokens] == cut.token_ids
    short = mlx_backend.generate(reqs("hello"), SampleParams(temperature=0, max_new_tokens=3))[0].completions[0]
    assert short.num_tokens == 3 and short.finish_reason == "length"


def test_mlx_update_weights_serves_new_weights_and_matches_a_fresh_load(tiny_model_dir: Path, tmp_path: Path) -> None:
    b = MLXBackend()
    b.load(str(tiny_model_dir))
    ids = AutoTokenizer.from_pretrained(tiny_model_dir)("hello")["input_ids"]
    before_lp, before = b.next_token_logprobs(ids), b.generate(reqs(*PROMPTS), GREEDY)
    hash0, fp0 = b.weights_hash(), b.weights_fingerprint()

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=g))
    assert b.update_weights({"lm_head.weight": model.lm_head.weight}) == 1  # a torch tensor, HF name
    after_lp, after = b.next_token_logprobs(ids), b.generate(reqs(*PROMPTS), GREEDY)
    assert not np.allclose(before_lp, after_lp, atol=1e-3) and tokens(after) != tokens(before)
    assert b.weights_hash() != hash0 and b.weights_fingerprint() != fp0

    new_dir = tmp_path / "new"
    shutil.copytree(tiny_model_dir, new_dir)
    model.save_pretrained(new_dir)
    fresh = MLXBackend()
    fresh.load(str(new_dir))
    assert fresh.weights_hash() == b.weights_hash()
    assert tokens(fresh.generate(reqs(*PROMPTS), GREEDY)) == tokens(after)
    # The transformers backend on the same new weights agrees with both.
    tb = TransformersBackend()
    tb.load(str(new_dir))
    np.testing.assert_allclose(tb.next_token_logprobs(ids), after_lp, atol=1e-4)

    # Updating from a model directory: back to the original weights.
    assert b.update_weights(tiny_model_dir) == 2
    np.testing.assert_allclose(b.next_token_logprobs(ids), before_lp, atol=1e-6)
    assert b.weights_hash() == hash0


def test_mlx_merges_peft_adapters_like_peft_does(tiny_model_dir: Path, tmp_path: Path, adapter_factory) -> None:  # noqa: ANN001
    a1 = adapter_factory(tmp_path / "a1", seed=1)
    a2 = adapter_factory(tmp_path / "a2", seed=2)
    m = MLXBackend()
    m.load(str(tiny_model_dir), adapter=str(a1))
    t = TransformersBackend()
    t.load(str(tiny_model_dir), adapter=str(a1))
    ids = t.encode(SampleRequest(prompt="hello"))
    np.testing.assert_allclose(m.next_token_logprobs(ids), t.next_token_logprobs(ids), atol=1e-4)
    assert tokens(m.generate(reqs(*PROMPTS), GREEDY)) == tokens(t.generate(reqs(*PROMPTS), GREEDY))

    assert m.update_weights(a2) == 1 and t.update_weights(a2) == 1
    np.testing.assert_allclose(m.next_token_logprobs(ids), t.next_token_logprobs(ids), atol=1e-4)
    assert m.adapter == str(a2)
