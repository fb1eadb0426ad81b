"""Serve benchmark: (a) single-stream tokens/s through gateway + serve vs transformers ``generate``
in-process (target ratio >= 0.9); (b) 8 concurrent clients vs the same 8 requests one after another
(target >= 3x); time to first token p50/p95.

    .venv/bin/python benchmarks/serve/run.py [--size tiny|small] [--tokens 128] [--clients 8]

Starts a private nats-server, the gateway and serve as processes (halo_testing.ProcessStack), talks
to them with the official ``openai`` SDK, writes benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import openai
import torch
from halo_common.natsproc import free_port
from halo_models.tiny import default_cache_root, make_tiny_cached
from halo_testing.stack import ProcessStack
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = "Once upon a time"
RESULTS = Path(__file__).resolve().parents[1] / "results" / "serve.json"


def direct_tokens_per_s(model_dir: Path, tokens: int, repeats: int) -> float:
    """transformers generate in-process, greedy, exactly ``tokens`` new tokens (EOS suppressed)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    eos = [tok.eos_token_id]
    best = 0.0
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=8, do_sample=False, suppress_tokens=eos)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=tokens, do_sample=False, suppress_tokens=eos)
            dt = time.perf_counter() - t0
            best = max(best, (out.shape[1] - ids.shape[1]) / dt)
    return best


async def one_stream(client: openai.AsyncOpenAI, tokens: int) -> tuple[int, float, float]:
    """(completion tokens, seconds to first token, total seconds) of one streamed completion."""
    t0 = time.perf_counter()
    first = None
    n = 0
    stream = await client.completions.create(model="bench", prompt=PROMPT, max_tokens=tokens, temperature=0,
                                             stream=True, stream_options={"include_usage": True},
                                             extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text and first is None:
            first = time.perf_counter() - t0
        if chunk.usage:
            n = chunk.usage.completion_tokens
    return n, first or 0.0, time.perf_counter() - t0


async def measure(url: str, tokens: int, clients: int, repeats: int) -> dict:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)
    await one_stream(client, 8)  # warm-up
    single = 0.0
    for _ in range(repeats):
        n, _, dt = await one_stream(client, tokens)
        single = max(single, n / dt)
    t0 = time.perf_counter()
    seq = [await one_stream(client, tokens) for _ in range(clients)]
    seq_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    conc = await asyncio.gather(*(one_stream(client, tokens) for _ in range(clients)))
    conc_s = time.perf_counter() - t0
    await client.close()
    ttft = sorted(x[1] for x in conc)
    return {
        "single_stream_tokens_per_s": single,
        "sequential_tokens_per_s": sum(x[0] for x in seq) / seq_s,
        "concurrent_tokens_per_s": sum(x[0] for x in conc) / conc_s,
        "ttft_concurrent_p50_s": statistics.median(ttft),
        "ttft_concurrent_p95_s": ttft[min(len(ttft) - 1, int(round(0.95 * (len(ttft) - 1))))],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny", choices=("tiny", "small"))
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model_dir = make_tiny_cached(default_cache_root(), arch="llama", size=args.size)
    direct = direct_tokens_per_s(model_dir, args.tokens, args.repeats)
    root = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    env = {"HALO_SERVE_PORT": str(free_port()), "HALO_SERVE_MODELS": json.dumps([f"bench={model_dir}"]),
           "HALO_SERVE_MAX_BATCH_SIZE": str(max(8, args.clients))}
    stack = ProcessStack(root, ["halo_gateway", "halo_serve"], ready={"serve"}, env=env)
    try:
        served = asyncio.run(measure(stack.url, args.tokens, args.clients, args.repeats))
    finally:
        stack.close()
    result = {
        "model": f"tiny-{args.size} llama (CPU: {torch.get_num_threads()} thread)", "tokens": args.tokens,
        "clients": args.clients, "direct_generate_tokens_per_s": direct, **served,
        "single_stream_ratio_vs_generate": served["single_stream_tokens_per_s"] / direct,
        "concurrency_speedup": served["concurrent_tokens_per_s"] / served["sequential_tokens_per_s"],
        "targets": {"single_stream_ratio_vs_generate": 0.9, "concurrency_speedup": 3.0},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"direct generate          {direct:8.1f} tok/s")
    print(f"serve single stream      {served['single_stream_tokens_per_s']:8.1f} tok/s  "
          f"ratio {result['single_stream_ratio_vs_generate']:.2f} (target >= 0.9)")
    print(f"{args.clients} sequential             {served['sequential_tokens_per_s']:8.1f} tok/s")
    print(f"{args.clients} concurrent             {served['concurrent_tokens_per_s']:8.1f} tok/s  "
          f"speedup {result['concurrency_speedup']:.2f}x (target >= 3x)")
    print(f"TTFT under concurrency   p50 {served['ttft_concurrent_p50_s'] * 1000:.1f} ms  "
          f"p95 {served['ttft_concurrent_p95_s'] * 1000:.1f} ms")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
