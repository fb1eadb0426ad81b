"""The transformers rollout backend on the tiny model: batching, seeds, stops, chat prompts, and
weight updates that provably change what is served (and match a fresh load of the new weights)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from halo_common.errors import BadRequest, NotFound, Unprocessable
from halo_sampling.backends.base import derive_seed, find_stop
from halo_sampling.backends.transformers_backend import TransformersBackend
from halo_schemas.rollout import ChatTurn, SampleParams, SampleRequest
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = ["The quick brown fox", "hello", "Once upon a time there was a", "def add(a, b):", "x"]
GREEDY = SampleParams(temperature=0, max_new_tokens=12)


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> TransformersBackend:
    b = TransformersBackend(max_batch_size=8)
    b.load(str(tiny_model_dir))
    return b


def reqs(*prompts: str, params: SampleParams | None = None) -> list[SampleRequest]:
    return [SampleRequest(prompt=p, params=params) for p in prompts]


def tokens(results) -> list[list[list[int]]]:  # noqa: ANN001
    return [[c.token_ids for c in r.completions] for r in results]


def test_batched_greedy_equals_per_prompt_and_hf_generate(backend: TransformersBackend) -> None:
    batched = backend.generate(reqs(*PROMPTS), GREEDY)
    single = [backend.generate(reqs(p), GREEDY)[0] for p in PROMPTS]
    assert tokens(batched) == tokens(single)
    # ... and both equal transformers' own greedy generate, prompt by prompt (no padding there).
    for p, res in zip(PROMPTS, batched, strict=True):
        enc = backend.tokenizer(p, return_tensors="pt")
        out = backend.model.generate(**enc, do_sample=False, max_new_tokens=12, pad_token_id=0)
        assert res.completions[0].token_ids == out[0, enc["input_ids"].shape[1]:].tolist()
        assert res.prompt_token_ids == enc["input_ids"][0].tolist() == backend.encode(SampleRequest(prompt=p))
        assert res.prompt_num_tokens == enc["input_ids"].shape[1]
    c = batched[0].completions[0]
    assert c.finish_reason == "length" and c.num_tokens == 12 and c.seed is None
    assert c.text == backend.tokenizer.decode(c.token_ids, skip_special_tokens=True)


def test_batch_limit_smaller_than_n_gives_the_same_results(tiny_model_dir: Path, backend: TransformersBackend) -> None:
    small = TransformersBackend(max_batch_size=3)
    small.load(str(tiny_model_dir))
    params = SampleParams(n=5, temperature=1.0, max_new_tokens=6, seed=11)
    assert tokens(small.generate(reqs(*PROMPTS[:3]), params)) == tokens(backend.generate(reqs(*PROMPTS[:3]), params))


def test_logprob_sum_matches_a_teacher_forced_forward_pass(backend: TransformersBackend) -> None:
    res = backend.generate(reqs("hello"), SampleParams(n=2, temperature=1.0, max_new_tokens=8, seed=3, logprobs=True))
    prompt = backend.tokenizer("hello")["input_ids"]
    for c in res[0].completions:
        ids = torch.tensor([prompt + c.token_ids])
        with torch.no_grad():
            lp = torch.log_softmax(backend.model(ids).logits[0].float(), -1)
        expected = [lp[len(prompt) - 1 + k, t].item() for k, t in enumerate(c.token_ids)]
        assert c.token_logprobs == pytest.approx(expected, abs=1e-4)
        assert c.logprob_sum == pytest.approx(sum(expected), abs=1e-3)


def test_seeds_reproduce_whatever_else_is_in_the_batch(backend: TransformersBackend) -> None:
    params = SampleParams(n=4, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=7)
    alone = backend.generate(reqs("hello", params=params))
    mixed = backend.generate([*reqs("The quick brown fox", params=SampleParams(n=3, temperature=0.7, max_new_tokens=10, seed=1)),
                              *reqs("hello", params=params), *reqs("x", params=GREEDY)])
    assert tokens(alone)[0] == tokens(mixed)[1]
    assert tokens(backend.generate(reqs("hello", params=params))) == tokens(alone)
    # Different samples of one request differ, and sample j's seed is derived from (seed, j).
    assert len({tuple(t) for t in tokens(alone)[0]}) == 4
    assert [c.seed for c in alone[0].completions] == [derive_seed(7, j) for j in range(4)]
    # The first k completions of n=4 are exactly the completions of n=k.
    two = backend.generate(reqs("hello", params=params.model_copy(update={"n": 2})))
    assert tokens(two)[0] == tokens(alone)[0][:2]
    # Another seed gives other completions.
    other = backend.generate(reqs("hello", params=params.model_copy(update={"seed": 8})))
    assert tokens(other)[0] != tokens(alone)[0]


def test_random_seed_is_reported_and_reproduces(backend: TransformersBackend) -> None:
    params = SampleParams(n=2, temperature=1.0, max_new_tokens=6)
    first = backend.generate(reqs("hello"), params)[0]
    again = backend.generate(reqs("hello"), params.model_copy(update={"seed": first.seed}))[0]
    assert [c.token_ids for c in again.completions] == [c.token_ids for c in first.completions]


def test_top_p_restricts_sampling_to_the_nucleus(backend: TransformersBackend) -> None:
    # With a tiny top_p only the most likely token survives: sampling equals greedy decoding.
    nucleus = backend.generate(reqs(*PROMPTS), SampleParams(n=2, temperature=1.0, top_p=1e-6, max_new_tokens=8, seed=1))
    greedy = backend.generate(reqs(*PROMPTS), SampleParams(temperature=0, max_new_tokens=8))
    for r, g in zip(nucleus, greedy, strict=True):
        assert all(c.token_ids == g.completions[0].token_ids for c in r.completions)


def test_stop_string_cuts_text_and_reports_stop(backend: TransformersBackend) -> None:
    full = backend.generate(reqs("Once upon a time there was a"), SampleParams(temperature=0, max_new_tokens=24))[0]
    text = full.completions[0].text
    stop = text[6:8]  # a string the greedy completion certainly contains
    assert find_stop(text, [stop]) is not None
    cut = backend.generate(reqs("Once upon a time there was a"),
                           SampleParams(temperature=0, max_new_tokens=24, stop=["@@never@@", stop]))[0].completions[0]
    first = text.find(stop)
    assert cut.finish_reason == "stop" and cut.stop == stop
    assert cut.text == text[:first]
    # The tokens generated up to (and including) the stop string are kept, and are a prefix of the full run.
    assert full.completions[0].token_ids[: cut.num_tokens] == cut.token_ids
    assert stop in backend.tokenizer.decode(cut.token_ids) and cut.num_tokens < 24


def test_end_of_sequence_stops_and_is_kept_in_token_ids(tiny_model_dir: Path, backend: TransformersBackend) -> None:
    greedy = backend.generate(reqs("hello"), GREEDY)[0].completions[0].token_ids
    model = copy.deepcopy(backend.model)
    model.generation_config.eos_token_id = greedy[3]  # make the 4th greedy token the end-of-sequence token
    eos_backend = TransformersBackend.from_model(model, backend.tokenizer)
    c = eos_backend.generate(reqs("hello"), GREEDY)[0].completions[0]
    first = greedy.index(greedy[3])
    assert c.token_ids == greedy[: first + 1] and c.finish_reason == "stop" and c.stop is None


def test_messages_use_the_chat_template(backend: TransformersBackend) -> None:
    msgs = [ChatTurn(role="system", content="be brief"), ChatTurn(role="user", content="hi there")]
    res = backend.generate([SampleRequest(messages=msgs)], GREEDY)[0]
    text = backend.tokenizer.apply_chat_template([m.model_dump() for m in msgs], add_generation_prompt=True,
                                                 tokenize=False)
    ids = backend.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert text.endswith("<|im_start|>assistant\n") and res.prompt_num_tokens == len(ids)
    by_ids = backend.generate([SampleRequest(prompt_token_ids=ids)], GREEDY)[0]
    assert by_ids.completions[0].token_ids == res.completions[0].token_ids


def test_bad_inputs_are_refused_with_the_field_named(backend: TransformersBackend, tmp_path: Path) -> None:
    with pytest.raises(BadRequest) as err:
        backend.generate([SampleRequest(prompt_token_ids=[1, 99999])])
    assert err.value.param == "prompt_token_ids"
    with pytest.raises(BadRequest) as err:
        backend.generate(reqs("hi"), SampleParams(max_new_tokens=600))
    assert "context of 512" in err.value.message and err.value.param == "requests[0].params.max_new_tokens"
    with pytest.raises(NotFound):
        TransformersBackend().load(str(tmp_path / "missing"))
    with pytest.raises(Unprocessable):
        TransformersBackend().load(str(tmp_path))  # an empty directory is no model


# ---- weight updates --------------------------------------------------------------------------------
def perturbed_state(backend: TransformersBackend, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in backend.model.state_dict().items()}
    # A large change of the output head: every greedy path changes, not just a few logits.
    state["lm_head.weight"] = torch.randn(state["lm_head.weight"].shape, generator=g)
    return state


def test_update_from_a_state_dict_serves_the_new_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    b = TransformersBackend()
    b.load(str(tiny_model_dir))
    ids = b.encode(SampleRequest(prompt="hello"))
    before_lp, before = b.next_token_logprobs(ids), b.generate(reqs(*PROMPTS), GREEDY)
    fp0, hash0 = b.weights_fingerprint(), b.weights_hash()
    new = perturbed_state(b)
    assert b.update_weights(new) == 1 and b.weights_version == 1
    after_lp, after = b.next_token_logprobs(ids), b.generate(reqs(*PROMPTS), GREEDY)
    assert not np.allclose(before_lp, after_lp, atol=1e-3)
    assert tokens(after) != tokens(before)
    assert b.weights_fingerprint() != fp0 and b.weights_hash() != hash0
    # A backend loaded fresh from the new weights serves exactly the same thing.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.load_state_dict(new)
    model.save_pretrained(tmp_path / "new")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "new")
    fresh = TransformersBackend()
    fresh.load(str(tmp_path / "new"))
    assert fresh.weights_hash() == b.weights_hash()
    np.testing.assert_allclose(fresh.next_token_logprobs(ids), after_lp, atol=1e-5)
    assert tokens(fresh.generate(reqs(*PROMPTS), GREEDY)) == tokens(after)
    # ... and updating the first backend from that directory is a no-op on the weights.
    b.update_weights(tmp_path / "new")
    assert b.weights_version == 2 and b.weights_hash() == fresh.weights_hash()


def test_update_refuses_unknown_names_and_shapes(backend: TransformersBackend) -> None:
    v = backend.weights_version
    with pytest.raises(BadRequest, match="unknown parameter"):
        backend.update_weights({"not.a.weight": torch.zeros(2)})
    with pytest.raises(BadRequest, match="shape mismatch"):
        backend.update_weights({"lm_head.weight": torch.zeros(2, 2)})
    assert backend.weights_version == v


def test_adapter_load_and_update_match_a_fresh_load(tiny_model_dir: Path, tmp_path: Path, adapter_factory) -> None:  # noqa: ANN001
    from peft import PeftModel

    a1 = adapter_factory(tmp_path / "a1", seed=1)
    a2 = adapter_factory(tmp_path / "a2", seed=2)
    b = TransformersBackend()
    b.load(str(tiny_model_dir), adapter=str(a1))
    ids = b.encode(SampleRequest(prompt="hello"))
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), a1).eval()
    with torch.no_grad():
        ref_lp = torch.log_softmax(ref(torch.tensor([ids])).logits[0, -1], -1).numpy()
    np.testing.assert_allclose(b.next_token_logprobs(ids), ref_lp, atol=1e-5)
    out1 = b.generate(reqs(*PROMPTS), GREEDY)

    model_obj = b.model
    assert b.update_weights(a2) == 1
    assert b.model is model_obj  # same structure: weights replaced in place, nothing rebuilt
    out2 = b.generate(reqs(*PROMPTS), GREEDY)
    fresh = TransformersBackend()
    fresh.load(str(tiny_model_dir), adapter=str(a2))
    assert tokens(out2) == tokens(fresh.generate(reqs(*PROMPTS), GREEDY)) != tokens(out1)
    np.testing.assert_allclose(b.next_token_logprobs(ids), fresh.next_token_logprobs(ids), atol=1e-5)

    # An adapter of another rank is a different structure: the owned model is rebuilt for it.
    a3 = adapter_factory(tmp_path / "a3", seed=3, rank=8)
    b.update_weights(a3)
    fresh3 = TransformersBackend()
    fresh3.load(str(tiny_model_dir), adapter=str(a3))
    np.testing.assert_allclose(b.next_token_logprobs(ids), fresh3.next_token_logprobs(ids), atol=1e-5)
    assert b.weights_version == 2 and json.loads((a3 / "adapter_config.json").read_text())["r"] == 8


def test_in_process_policy_update_is_served_without_copy(tiny_model_dir: Path) -> None:
    """A trainer wraps its own policy, takes an optimizer step, and the next rollout uses the new weights."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.train()
    b = TransformersBackend.from_model(model, tok)
    ids = b.encode(SampleRequest(prompt="hello"))
    before_lp = b.next_token_logprobs(ids)
    before = b.generate(reqs(*PROMPTS), GREEDY)
    assert model.training  # generation switched dropout off only while it ran

    # A few optimizer steps that make token 42 likely after "hello"; the backend is told after each one.
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for step in range(1, 6):
        logits = model(torch.tensor([ids])).logits[0, -1]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(logits[None], torch.tensor([42])).backward()
        opt.step()
        assert b.update_weights() == step

    after_lp = b.next_token_logprobs(ids)
    assert after_lp[42] > before_lp[42] + 1.0 and int(after_lp.argmax()) == 42
    after = b.generate(reqs(*PROMPTS), GREEDY)
    assert after[1].completions[0].token_ids[0] == 42 != before[1].completions[0].token_ids[0]
    with torch.no_grad():
        model.eval()
        own = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1).numpy()
    np.testing.assert_allclose(after_lp, own, atol=1e-5)
