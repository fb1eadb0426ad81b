"""The engine and the OpenAI serving layers, driven without HTTP or NATS."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from halo_common.errors import NotFound
from halo_common.paths import HaloPaths
from halo_serve.core.engine import ContextLengthExceeded, Engine, EngineConfig, Overloaded
from halo_serve.core.jsonmode import json_prefix_state
from halo_serve.core.models import ModelCatalog, ModelNotFound
from halo_serve.core.serving_chat import ChatServing
from halo_serve.core.serving_completion import CompletionServing
from halo_serve.core.tool_parsers import parse_tool_calls, tool_format_of


@pytest.fixture
async def engine(tiny_model_dir: Path, tmp_path: Path):
    catalog = ModelCatalog(HaloPaths(tmp_path / "home"))
    catalog.register("tiny", str(tiny_model_dir))
    eng = Engine(catalog, EngineConfig(max_batch_size=8, max_queue=8))
    eng.start()
    yield eng
    eng.shutdown()


def chat(model: str = "tiny", **kw):
    return {"model": model, "messages": [{"role": "user", "content": "tell me a story"}], **kw}


async def sse_texts(gen) -> tuple[list[dict], bool]:
    chunks, done = [], False
    async for line in gen:
        data = line.removeprefix("data: ").strip()
        if data == "[DONE]":
            done = True
        else:
            chunks.append(json.loads(data))
    return chunks, done


async def test_stop_strings_cut_during_generation_and_never_returned(engine):
    serving = ChatServing(engine)
    full = await serving.create(chat(max_tokens=40, seed=11, ignore_eos=True))
    text = full.choices[0].message.content
    # a 3-character stop string that first occurs in the middle of the greedy reply
    stop = next(text[i:i + 3] for i in range(10, len(text) - 3) if text.find(text[i:i + 3]) == i)
    cut = await serving.create(chat(max_tokens=40, seed=11, ignore_eos=True, stop=[stop, "zzzz-never"]))
    assert cut.choices[0].message.content == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < full.usage.completion_tokens  # it stopped, not cut afterwards
    chunks, done = await sse_texts(await serving.create(chat(max_tokens=40, seed=11, ignore_eos=True,
                                                             stop=stop, stream=True)))
    assert done
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert streamed == text[:text.index(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_max_tokens_length_usage_and_n_with_seed(engine):
    serving = ChatServing(engine)
    r = await serving.create(chat(max_tokens=7, temperature=0, ignore_eos=True))
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 7
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7
    a = await serving.create(chat(max_tokens=12, n=2, seed=5, ignore_eos=True))
    b = await serving.create(chat(max_tokens=12, n=2, seed=5, ignore_eos=True))
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert a.choices[0].message.content != a.choices[1].message.content
    assert a.usage.completion_tokens == 24


async def test_streaming_usage_and_done(engine):
    serving = ChatServing(engine)
    chunks, done = await sse_texts(await serving.create(chat(max_tokens=9, ignore_eos=True, stream=True,
                                                             stream_options={"include_usage": True})))
    assert done and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 9


async def test_stream_interval_groups_tokens_after_the_first(engine):
    """With a stream interval the first output leaves at once (a 60 s interval would otherwise stall
    this test); outputs made within the interval join the next chunk, and a finish is never held."""
    from halo_serve.core.engine import RequestStream, SeqOutput

    stream = RequestStream(engine, "req-interval", 1, asyncio.get_running_loop(), interval_s=60.0)
    chunks = aiter(stream)
    stream.deliver([SeqOutput(0, "Once", [1], None, None, 1)])
    first = await asyncio.wait_for(anext(chunks), 5)
    assert (first.text, first.token_ids) == ("Once", [1])
    stream.deliver([SeqOutput(0, " upon", [2], None, None, 2)])
    stream.deliver([SeqOutput(0, " a", [3], None, None, 3)])
    stream.deliver([SeqOutput(0, " time", [4], None, "length", 4)])
    rest = await asyncio.wait_for(anext(chunks), 5)  # the finish releases the held tokens at once
    assert (rest.text, rest.token_ids, rest.finish_reason) == (" upon a time", [2, 3, 4], "length")
    with pytest.raises(StopAsyncIteration):
        await anext(chunks)


async def test_stream_interval_keeps_every_token_through_the_serving_layer(tiny_model_dir, tmp_path):
    catalog = ModelCatalog(HaloPaths(tmp_path / "home"))
    catalog.register("tiny", str(tiny_model_dir))
    texts = {}
    for interval in (0.0, 0.05):
        eng = Engine(catalog, EngineConfig(stream_interval_s=interval))
        eng.start()
        try:
            chunks, done = await sse_texts(await CompletionServing(eng).create(
                {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0,
                 "ignore_eos": True, "stream": True, "logprobs": 0}))
        finally:
            eng.shutdown()
        assert done
        choices = [c["choices"][0] for c in chunks if c["choices"]]
        texts[interval] = ("".join(c["text"] for c in choices), [t for c in choices for t in c["logprobs"]["tokens"]])
    assert texts[0.05] == texts[0.0] and len(texts[0.0][1]) == 24


async def test_errors(engine):
    serving = ChatServing(engine)
    with pytest.raises(ModelNotFound):
        await serving.create(chat("no-such-model"))
    with pytest.raises(ContextLengthExceeded):
        await serving.create({"model": "tiny", "messages": [{"role": "user", "content": "word " * 700}]})
    from halo_common.errors import BadRequest

    with pytest.raises(BadRequest) as e:
        await serving.create(chat(top_p=3))
    assert e.value.param == "top_p"
    with pytest.raises(Overloaded):  # more sequences than the queue holds
        await serving.create(chat(n=9, max_tokens=5))


async def test_cancel_frees_the_slot(engine):
    serving = ChatServing(engine)
    gen = await serving.create(chat(max_tokens=400, ignore_eos=True, stream=True))
    got = 0
    async for _ in gen:
        got += 1
        if got == 3:
            break
    await gen.aclose()
    for _ in range(200):
        if engine.stats()["running"] == 0:
            break
        await asyncio.sleep(0.02)
    assert engine.stats()["running"] == 0 and engine.stats()["waiting"] == 0


async def test_completions_echo_logprobs_match_score(engine):
    serving = CompletionServing(engine)
    r = await serving.create({"model": "tiny", "prompt": "the quick brown fox", "max_tokens": 1, "echo": True,
                              "logprobs": 1, "temperature": 0})
    lp = r.choices[0].logprobs
    assert r.choices[0].text.startswith("the quick brown fox")
    n_prompt = r.usage.prompt_tokens
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == n_prompt + 1
    ids = await engine.call(lambda: engine.ensure_loaded("tiny")[0].backend.tokenize(
        engine.loaded["tiny"].model, "the quick brown fox"))
    score = await engine.call(engine.score, "tiny", ids, 1)
    assert lp.token_logprobs[:n_prompt] == pytest.approx(score.logprobs)
    zero = await serving.create({"model": "tiny", "prompt": [ids, ids], "max_tokens": 0, "echo": True,
                                 "logprobs": 0})
    assert len(zero.choices) == 2 and zero.usage.completion_tokens == 0


async def test_json_object_mode(engine):
    r = await ChatServing(engine).create(chat(max_tokens=30, seed=3, response_format={"type": "json_object"}))
    text = r.choices[0].message.content
    assert json_prefix_state(text) in ("partial", "complete")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


async def test_lru_eviction_and_adapters_and_runs(tiny_model_dir, tiny_qwen2_dir, tiny_adapters, tmp_path):
    paths = HaloPaths(tmp_path / "home")
    run = paths.run_dir("run-abc")
    (run).mkdir(parents=True)
    import shutil

    shutil.copytree(tiny_adapters["a1"], run / "adapter")
    cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tiny_model_dir)
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    catalog = ModelCatalog(paths)
    catalog.register("llama", str(tiny_model_dir))
    catalog.register("qwen", str(tiny_qwen2_dir))
    catalog.register("a2", adapter=str(tiny_adapters["a2"]), base="llama")
    events: list[tuple[str, str]] = []
    eng = Engine(catalog, EngineConfig(max_loaded_models=1))
    eng.on_model_event = lambda kind, mid, info: events.append((kind, mid))
    eng.start()
    try:
        serving = ChatServing(eng)
        base = await serving.create(chat("llama", max_tokens=10, temperature=0, ignore_eos=True))
        via_run = await serving.create(chat("run:run-abc", max_tokens=10, temperature=0, ignore_eos=True))
        a2 = await serving.create(chat("a2", max_tokens=10, temperature=0, ignore_eos=True))
        assert len({base.choices[0].message.content, via_run.choices[0].message.content,
                    a2.choices[0].message.content}) == 3
        assert list(eng.loaded) == ["llama"]  # adapters share the one base
        await serving.create(chat("qwen", max_tokens=3))
        assert list(eng.loaded) == ["qwen"]
        assert ("unloaded", "llama") in events and ("loaded", "qwen") in events
        with pytest.raises(NotFound):
            await serving.create(chat("run:missing"))
    finally:
        eng.shutdown()


def test_tool_call_parsing():
    tpl = "{% for m in messages %}{{ m.content }}{% endfor %}{% if tools %}<tool_call>{% endif %}"
    assert tool_format_of(tpl) == "hermes" and tool_format_of("{{ x }}") is None
    calls, content = parse_tool_calls(
        'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', "hermes")
    assert content == "Sure." and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    calls, content = parse_tool_calls('<tool_call>{"name": 1}</tool_call>', "hermes")
    assert calls == [] and content == '<tool_call>{"name": 1}</tool_call>'
    calls, _ = parse_tool_calls('[TOOL_CALLS][{"name": "f", "arguments": {}}]', "mistral")
    assert calls[0].function.arguments == "{}"


def test_json_prefix_state():
    assert json_prefix_state('{"a": [1, 2') == "partial"
    assert json_prefix_state('{"a": 1}') == "complete"
    assert json_prefix_state(' {"a": {"b": null}, "c": "x\\"y"} ') == "complete"
    assert json_prefix_state('{"a" 1') == "invalid"
    assert json_prefix_state("[1]") == "invalid"  # json_object mode wants an object
    assert json_prefix_state('{"a": tru') == "partial"
    assert json_prefix_state('{"a": 01') == "invalid"
    assert json_prefix_state('{"a": 1}}') == "invalid"


def test_outputs_that_piled_up_leave_as_one_group_per_choice():
    from halo_serve.core.engine import SeqOutput, TokenLogprob, _coalesce

    lp = [TokenLogprob(token="a", logprob=-0.1, top=[]), TokenLogprob(token="b", logprob=-0.2, top=[])]
    items = [SeqOutput(0, "a", [1], lp[:1]), SeqOutput(1, "x", [7], None), SeqOutput(0, "b", [2], lp[1:], "length", 2),
             SeqOutput(1, "", [8], None)]
    first, second = _coalesce(items)
    assert (first.index, first.text, first.token_ids, first.finish_reason, first.completion_tokens) == (0, "ab", [1, 2],
                                                                                                         "length", 2)
    assert [t.token for t in first.logprobs] == ["a", "b"] and items[0].token_ids == [1]  # inputs untouched
    assert (second.index, second.text, second.token_ids, second.finish_reason) == (1, "x", [7, 8], None)
