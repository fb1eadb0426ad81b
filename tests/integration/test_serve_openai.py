"""The official ``openai`` SDK against the gateway + serve running as real processes (and NATS).

Covers chat, completions, models, n, stop, seed, logprobs, an adapter id, streaming order,
disconnect freeing the slot, and every error class the SDK maps (404, 400, 429).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import openai
import pytest
from halo_common.natsproc import free_port
from halo_testing.stack import ProcessStack

pytestmark = pytest.mark.integration

TOKEN = "unused-without-a-gateway-token"  # ProcessStack polls the gateway without auth
MSG = [{"role": "user", "content": "tell me a story"}]


@pytest.fixture(scope="module")
def tiny_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A PEFT LoRA adapter with random, large weights (it changes greedy output) over the tiny llama."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(100)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.mul_(20)
    out = tmp_path_factory.mktemp("adapters") / "a1"
    peft.save_pretrained(out)
    return {"a1": out}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_adapters: dict[str, Path]):
    root = tmp_path_factory.mktemp("serve-stack")
    serve_port = free_port()
    env = {
        "HALO_SERVE_PORT": str(serve_port),
        "HALO_SERVE_MODELS": json.dumps([f"tiny={tiny_model_dir}"]),
        "HALO_SERVE_ADAPTERS": json.dumps([f"tiny-a1={tiny_adapters['a1']}"]),
        "HALO_SERVE_MAX_QUEUE": "8",
    }
    s = ProcessStack(root, ["halo_gateway", "halo_serve"], ready={"serve"}, env=env)
    s.serve_url = f"http://127.0.0.1:{serve_port}"
    yield s
    s.close()


@pytest.fixture
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=TOKEN, max_retries=0)


def test_chat_completions_models_and_sampling(client):
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8
    two = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=10, n=2, seed=4)
    again = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=10, n=2, seed=4)
    assert len(two.choices) == 2
    assert [c.message.content for c in two.choices] == [c.message.content for c in again.choices]
    lp = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=5, logprobs=True, top_logprobs=2,
                                        extra_body={"ignore_eos": True})
    content = lp.choices[0].logprobs.content
    assert len(content) == 5 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    full = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=30, seed=11,
                                          extra_body={"ignore_eos": True}).choices[0].message.content
    stop = next(full[i:i + 3] for i in range(8, len(full) - 3) if full.find(full[i:i + 3]) == i)
    cut = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=30, seed=11, stop=[stop],
                                         extra_body={"ignore_eos": True})
    assert cut.choices[0].message.content == full[:full.index(stop)] and cut.choices[0].finish_reason == "stop"
    ids = {m.id for m in client.models.list().data}
    assert {"tiny", "tiny-a1"} <= ids
    base = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    adapted = client.chat.completions.create(model="tiny-a1", messages=MSG, max_tokens=10, temperature=0,
                                             extra_body={"ignore_eos": True})
    assert adapted.model == "tiny-a1" and adapted.choices[0].message.content != base.choices[0].message.content


def test_completions_echo_logprobs(client):
    r = client.completions.create(model="tiny", prompt="the quick brown fox", max_tokens=1, echo=True, logprobs=1,
                                  temperature=0)
    lp = r.choices[0].logprobs
    assert r.choices[0].text.startswith("the quick brown fox")
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == r.usage.prompt_tokens + 1
    assert all(x < 0 for x in lp.token_logprobs[1:])


def test_errors_raise_the_sdk_classes(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=MSG)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MSG, temperature=7)
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "word " * 700}])
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="tiny", messages=MSG, n=9)  # more than HALO_SERVE_MAX_QUEUE
    assert e.value.response.headers.get("retry-after")


def test_streaming_is_real_and_disconnect_frees_the_slot(client, stack):
    stream = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=64, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    first_at = None
    rid = None
    texts = []
    usage = None
    for chunk in stream:
        rid = chunk.id
        if chunk.choices and chunk.choices[0].delta.content and first_at is None:
            first_at = time.monotonic()
        if chunk.choices:
            texts.append(chunk.choices[0].delta.content or "")
        usage = chunk.usage or usage
    assert usage.completion_tokens == 64
    trace = httpx.get(f"{stack.serve_url}/debug/requests/{rid}").json()
    times = trace["token_times"]
    assert len(times) == 64
    # The first content chunk reached the client before the server had produced half the reply
    # (both clocks are the host's monotonic clock): tokens are sent as they are generated.
    assert first_at < times[32]

    s = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=400, stream=True,
                                       extra_body={"ignore_eos": True})
    for n, _ in enumerate(s):
        if n == 2:
            break
    s.close()  # the client goes away mid-generation
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.get(f"{stack.serve_url}/health").json()["running"] == 0:
            break
        time.sleep(0.1)
    assert httpx.get(f"{stack.serve_url}/health").json()["running"] == 0


async def test_async_client_streaming_and_concurrency(stack):
    client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=TOKEN, max_retries=0)

    async def one(seed: int) -> str:
        s = await client.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, seed=seed, stream=True,
                                                 extra_body={"ignore_eos": True})
        return "".join([c.choices[0].delta.content or "" async for c in s if c.choices])

    results = await asyncio.gather(*(one(i) for i in range(4)))
    solo = await one(2)
    assert results[2] == solo  # batched with others, the same seed gives the same reply
    r = await client.completions.create(model="tiny", prompt="hello", max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason in ("length", "stop")
    await client.close()


def test_cli_serve_list_load_unload_and_chat(stack, tiny_qwen2_dir):
    r = stack.cli("serve", "load", str(tiny_qwen2_dir), "--id", "qwen")
    assert r.returncode == 0, r.stderr + r.stdout
    listing = stack.cli("serve", "list")
    assert listing.returncode == 0 and "qwen" in listing.stdout and "tiny-a1" in listing.stdout
    chat = stack.cli("chat", "qwen", "--prompt", "hello", "--max-tokens", "5", "--temperature", "0")
    assert chat.returncode == 0, chat.stderr + chat.stdout
    assert "model>" in chat.stdout
    r = stack.cli("serve", "unload", "qwen", "--forget")
    assert r.returncode == 0 and "qwen" not in r.stdout
    bad = stack.cli("chat", "no-such-model", "--prompt", "hi")
    assert bad.returncode == 1 and "does not exist" in (bad.stdout + bad.stderr)


def _greedy(client: openai.OpenAI, model: str) -> tuple[list[int] | None, str]:
    r = client.completions.create(model=model, prompt="The quick brown fox", max_tokens=12, temperature=0,
                                  extra_body={"ignore_eos": True})
    return r.usage.completion_tokens, r.choices[0].text


@pytest.mark.parametrize("fmt", ["gguf", "mlx"])
def test_converted_gguf_and_mlx_ids_answer_like_their_source(fmt, stack, client, tiny_model_dir, tmp_path):
    """An export (converted and verified), served under its own id, answers the greedy prompt with the same
    text as its source — beyond the verify step, through the whole serving path."""
    from halo_schemas.convert import ConvertSpec
    from halo_serve.core.convert import convert, supported_matrix
    from halo_serve.core.convert.testing import confident_copy

    why = supported_matrix()[fmt]["fp32"]
    if why:
        pytest.skip(f"SKIPPING served {fmt}: {why}")
    src = confident_copy(tiny_model_dir, tmp_path / "src")  # peaked predictions: greedy is not a coin toss
    out = tmp_path / ("model.gguf" if fmt == "gguf" else "mlx")
    m = convert(ConvertSpec(source=str(src), format=fmt, quant="fp32", out=str(out), max_new_tokens=8))
    assert m.status == "verified"
    for mid, path in ((f"src-{fmt}", src), (f"tiny-{fmt}", out)):
        r = httpx.post(f"{stack.url}/api/v1/serve/models", json={"id": mid, "model": str(path)}, timeout=300)
        assert r.status_code == 200, r.text
    listed = {m.id: m for m in client.models.list().data}
    assert f"tiny-{fmt}" in listed
    served = client.models.retrieve(f"tiny-{fmt}")
    assert served.id == f"tiny-{fmt}"
    assert _greedy(client, f"tiny-{fmt}") == _greedy(client, f"src-{fmt}")
    for mid in (f"src-{fmt}", f"tiny-{fmt}"):
        httpx.delete(f"{stack.url}/api/v1/serve/models/{mid}", params={"forget": "true"}, timeout=60)


def test_bearer_auth_on_v1_through_a_token_mode_gateway(stack, tmp_path):
    """A second gateway on the same NATS, in token mode: /v1 needs the bearer token; the SDK sends it."""
    import os
    import signal
    import subprocess
    import sys

    token = "hfk_" + "t0k3n" * 8
    port = free_port()
    env = {**stack.env, "HALO_GATEWAY_PORT": str(port), "HALO_GATEWAY_TOKEN": token}
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "halo_gateway"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        good = openai.OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0)
        r = good.chat.completions.create(model="tiny", messages=MSG, max_tokens=4, temperature=0)
        assert r.choices[0].message.content is not None and r.usage.completion_tokens >= 1
        assert "tiny" in {m.id for m in good.models.list().data}
        for wrong in ("hfk_" + "x" * 40, "nope"):
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=f"{url}/v1", api_key=wrong, max_retries=0).models.list()
        unauth = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": MSG}, timeout=10)
        assert unauth.status_code == 401 and unauth.headers.get("www-authenticate", "").startswith("Bearer")
        assert unauth.json()["error"]["type"] == "authentication_error"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
        log.close()
