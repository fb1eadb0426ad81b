"""halo-bus vs raw nats-py, measured side by side in one run against one private nats-server.

Usage::

    python benchmarks/bus/run.py            # full run (~1 min on 2 cores)
    python benchmarks/bus/run.py --quick    # smoke run (a few seconds)

Two measurements, each halo-bus vs the baseline a user would otherwise write with nats-py:

1. request/reply round trip: ``NatsBus.request`` against an endpoint registered with
   ``bus.add_service(...).add_endpoint(...)`` (typed pydantic messages, NATS micro, schema /
   correlation / trace headers) vs ``nc.request`` against a plain ``nc.subscribe`` responder that
   echoes the same bytes. N sequential requests, p50/p99 latency.
2. acked JetStream publish: ``NatsBus.publish_event`` vs ``js.publish`` of the same bytes on the
   same stream (``HALO_EVENTS``), sequential, each awaiting its ack; messages/s.

halo-bus has no core (fire-and-forget) publish, so there is nothing to compare there.

Both sides run in alternating rounds (which side goes first alternates too) so machine noise hits
both equally. By default tracing is set up exactly as every service does through
``halo_telemetry.setup`` with no OTLP endpoint configured (no SDK provider: halo-bus skips all
span work); ``--with-tracing`` installs the SDK provider with an in-memory exporter to measure
what tracing costs when it is on. The ratio printed is halo-bus time per operation / raw time per
operation; the target is an overhead under 20 % (ratio < 1.20). Results go to
``benchmarks/results/bus.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from halo_bus import NatsBus, subjects
from halo_common.natsproc import NatsProcess, find_nats_server
from halo_schemas.base import Message
from pydantic import Field

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "bus.json"
TARGET_OVERHEAD = 0.20  # halo-bus may cost at most 20 % more time per operation than raw nats-py

# There is no "bench" service; the subjects are built with the halo_bus.subjects helpers (the one
# place subject strings come from) under the gateway token, which serves no RPC verb of its own.
# The raw side gets its own verbs so the two responders never answer each other's requests.
HALO_RPC = subjects.rpc("gateway", "bench-ping")
RAW_RPC = subjects.rpc("gateway", "bench-ping-raw")
HALO_EVT = subjects.event("gateway", "bench", "halo", "published")
RAW_EVT = subjects.event("gateway", "bench", "raw", "published")


# ---- benchmark wire models (registered only in this process) ----------------------------------
class BenchPing(Message):
    """A small request, the size of a typical control-plane RPC (a few ids and a flag)."""

    schema_id = "halo.bench.ping.v1"
    seq: int = Field(description="Sequence number of the request.")
    run_id: str = Field(description="An id-sized string, as most control-plane requests carry.")
    flag: bool = Field(default=False, description="A boolean field.")


class BenchPong(Message):
    """The reply to :class:`BenchPing`."""

    schema_id = "halo.bench.pong.v1"
    seq: int = Field(description="Sequence number echoed from the request.")
    run_id: str = Field(description="Id echoed from the request.")
    flag: bool = Field(default=False, description="Flag echoed from the request.")


class BenchEvent(Message):
    """A small event, the size of a run-progressed event (step and a few metrics)."""

    schema_id = "halo.bench.event.v1"
    run_id: str = Field(description="Run the event belongs to.")
    step: int = Field(description="Training step.")
    loss: float = Field(description="A metric value.")
    tokens_per_s: float = Field(description="Another metric value.")


RUN_ID = "run-01jbench0000000000000000"


# ---- measurement helpers ----------------------------------------------------------------------
@dataclass
class Side:
    """Samples of one side (halo-bus or raw) of one measurement."""

    latencies_s: list[float] = field(default_factory=list)  # per-operation times (rpc)
    batch_times_s: list[float] = field(default_factory=list)  # wall time of each round's batch
    batch_cpu_s: list[float] = field(default_factory=list)  # CPU time of this process per batch
    ops: int = 0

    def cpu_us_per_op(self) -> float:
        """CPU of this process (requester + responder + codec) per operation. Far less sensitive
        to other processes on the machine than wall time, so it is reported alongside."""
        return sum(self.batch_cpu_s) / self.ops * 1e6


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; ``values`` need not be sorted."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def interleave(
    rounds: int,
    n: int,
    halo_op: Callable[[int], Awaitable[None]],
    raw_op: Callable[[int], Awaitable[None]],
    time_each: bool,
) -> tuple[Side, Side]:
    """Run ``rounds`` rounds of ``n`` sequential operations per side, alternating which side
    goes first, so drift and noise (CPU frequency, other processes) hit both sides equally."""
    halo, raw = Side(), Side()
    perf, cpu = time.perf_counter, time.process_time
    seq = 0
    for r in range(rounds):
        order = [(halo, halo_op), (raw, raw_op)] if r % 2 == 0 else [(raw, raw_op), (halo, halo_op)]
        for side, op in order:
            gc.collect()
            start, cpu_start = perf(), cpu()
            if time_each:
                for _ in range(n):
                    t0 = perf()
                    await op(seq)
                    side.latencies_s.append(perf() - t0)
                    seq += 1
            else:
                for _ in range(n):
                    await op(seq)
                    seq += 1
            side.batch_times_s.append(perf() - start)
            side.batch_cpu_s.append(cpu() - cpu_start)
            side.ops += n
    return halo, raw


def verdict(ratio: float) -> str:
    return "PASS" if ratio - 1.0 < TARGET_OVERHEAD else "MISS"


# ---- the benchmark ----------------------------------------------------------------------------
async def run(rounds: int, n: int, warmup: int, sdk_tracer: bool) -> dict[str, Any]:
    from halo_telemetry.setup import install_tracer_provider

    if sdk_tracer:
        # Tracing on: every hop creates real spans (exported in memory, then dropped).
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        install_tracer_provider("bench-bus", InMemorySpanExporter())
    else:
        install_tracer_provider("bench-bus")  # what a service does with no OTLP endpoint: nothing

    with tempfile.TemporaryDirectory(prefix="halo-bench-bus-") as tmp:
        proc = NatsProcess.start(store_dir=Path(tmp) / "nats", log_file=Path(tmp) / "nats.log")
        try:
            return await _measure(proc.url, rounds, n, warmup)
        finally:
            proc.stop()


async def _measure(url: str, rounds: int, n: int, warmup: int) -> dict[str, Any]:
    # Separate connections for requester and responder on both sides, as between two services.
    server_bus = await NatsBus.connect(url, name="bench-halo-server")
    client_bus = await NatsBus.connect(url, name="bench-halo-client")
    raw_server = await nats.connect(url, name="bench-raw-server")
    raw_client = await nats.connect(url, name="bench-raw-client")
    raw_js = raw_client.jetstream(timeout=5.0)
    try:
        # -- responders
        async def on_ping(req: BenchPing) -> BenchPong:
            return BenchPong(seq=req.seq, run_id=req.run_id, flag=req.flag)

        reg = await server_bus.add_service("bench", "0.0.0", "bench responder")
        await reg.add_endpoint(HALO_RPC, on_ping, BenchPing)
        # add_endpoint returns before the server has the subscription; without this flush the
        # first request from the other connection can race it and get "no responders".
        await server_bus.nc.flush()

        async def raw_echo(msg: Any) -> None:
            await msg.respond(msg.data)

        await raw_server.subscribe(RAW_RPC, queue="bench-raw", cb=raw_echo)
        await raw_server.flush()

        # The raw side sends the same bytes a BenchPing encodes to (same payload size).
        ping_bytes = BenchPing(seq=0, run_id=RUN_ID).model_dump_json().encode()
        event_bytes = BenchEvent(run_id=RUN_ID, step=0, loss=1.2345, tokens_per_s=4321.0).model_dump_json().encode()

        async def halo_rpc(i: int) -> None:
            reply = await client_bus.request(HALO_RPC, BenchPing(seq=i, run_id=RUN_ID), BenchPong, timeout=5.0)
            if reply.seq != i:  # a wrong answer would make the numbers meaningless
                raise AssertionError(f"halo-bus reply seq {reply.seq} != {i}")

        async def raw_rpc(_i: int) -> None:
            reply = await raw_client.request(RAW_RPC, ping_bytes, timeout=5.0)
            if reply.data != ping_bytes:
                raise AssertionError("raw reply differs from the request")

        async def halo_pub(i: int) -> None:
            await client_bus.publish_event(
                HALO_EVT, BenchEvent(run_id=RUN_ID, step=i, loss=1.2345, tokens_per_s=4321.0)
            )

        async def raw_pub(_i: int) -> None:
            await raw_js.publish(RAW_EVT, event_bytes, stream=subjects.STREAM_EVENTS)

        # -- warm up both sides (connections, JIT-ish caches, pydantic validators, stream files)
        for i in range(warmup):
            await halo_rpc(i)
            await raw_rpc(i)
            await halo_pub(i)
            await raw_pub(i)

        rpc_halo, rpc_raw = await interleave(rounds, n, halo_rpc, raw_rpc, time_each=True)
        pub_halo, pub_raw = await interleave(rounds, n, halo_pub, raw_pub, time_each=False)

        # Sanity: every acked publish is stored (the stream counts both sides' messages).
        info = await raw_js.stream_info(subjects.STREAM_EVENTS)
        expected = 2 * (warmup + rounds * n)
        if info.state.messages != expected:
            raise AssertionError(f"stream holds {info.state.messages} messages, expected {expected}")
    finally:
        # Closing drains the connection, which fires halo-bus's "disconnected; reconnecting"
        # warning; it is expected here, so keep it out of the benchmark output.
        logging.getLogger("halo_bus.nats").setLevel(logging.ERROR)
        await client_bus.close()
        await server_bus.close()
        await raw_client.drain()
        await raw_server.drain()

    def rpc_stats(side: Side) -> dict[str, float]:
        return {
            "p50_us": pct(side.latencies_s, 0.50) * 1e6,
            "p99_us": pct(side.latencies_s, 0.99) * 1e6,
            "mean_us": statistics.fmean(side.latencies_s) * 1e6,
            "cpu_us_per_op": side.cpu_us_per_op(),
            "requests": side.ops,
        }

    def pub_stats(side: Side) -> dict[str, float]:
        return {
            "msgs_per_s": side.ops / sum(side.batch_times_s),
            "median_round_msgs_per_s": statistics.median(n / t for t in side.batch_times_s),
            "cpu_us_per_op": side.cpu_us_per_op(),
            "messages": side.ops,
        }

    rh, rr = rpc_stats(rpc_halo), rpc_stats(rpc_raw)
    ph, pr = pub_stats(pub_halo), pub_stats(pub_raw)
    ratios = {
        "rpc_p50": rh["p50_us"] / rr["p50_us"],
        "rpc_p99": rh["p99_us"] / rr["p99_us"],
        # time per message, halo / raw (= raw rate / halo rate), so >1 means halo-bus costs more
        "publish": pr["msgs_per_s"] / ph["msgs_per_s"],
    }
    # Informational (no verdict): client-process CPU per operation, the noise-resistant view.
    cpu_ratios = {
        "rpc_cpu": rh["cpu_us_per_op"] / rr["cpu_us_per_op"],
        "publish_cpu": ph["cpu_us_per_op"] / pr["cpu_us_per_op"],
    }
    return {
        "rpc": {"halo_bus": rh, "raw_nats_py": rr},
        "publish_acked": {"halo_bus": ph, "raw_nats_py": pr},
        "ratios_halo_over_raw": ratios,
        "cpu_ratios_halo_over_raw": cpu_ratios,
        "verdicts": {k: verdict(v) for k, v in ratios.items()},
    }


def print_table(res: dict[str, Any], args: argparse.Namespace) -> None:
    rpc, pub, ratios = res["rpc"], res["publish_acked"], res["ratios_halo_over_raw"]
    tracer = "tracing on (SDK provider, in-memory exporter)" if args.sdk_tracer else "tracing as configured by default (off)"
    print(f"halo-bus vs raw nats-py — {args.rounds} rounds x {args.n} ops per side, interleaved; {tracer}")
    print(f"target: halo-bus overhead < {TARGET_OVERHEAD:.0%} (ratio halo/raw < {1 + TARGET_OVERHEAD:.2f})\n")
    rows = [
        ("rpc round trip p50 (us)", rpc["halo_bus"]["p50_us"], rpc["raw_nats_py"]["p50_us"], ratios["rpc_p50"]),
        ("rpc round trip p99 (us)", rpc["halo_bus"]["p99_us"], rpc["raw_nats_py"]["p99_us"], ratios["rpc_p99"]),
        (
            "acked JetStream publish (msg/s)",
            pub["halo_bus"]["msgs_per_s"],
            pub["raw_nats_py"]["msgs_per_s"],
            ratios["publish"],
        ),
    ]
    head = f"{'measurement':<40}{'halo-bus':>12}{'raw nats-py':>14}{'ratio':>9}{'overhead':>10}  verdict"
    print(head)
    print("-" * len(head))
    for name, h, r, ratio in rows:
        print(f"{name:<40}{h:>12,.1f}{r:>14,.1f}{ratio:>9.2f}{ratio - 1:>+10.0%}  {verdict(ratio)}")
    cpu = res["cpu_ratios_halo_over_raw"]
    for name, key, ratio in (
        ("rpc CPU per op (us, this process)", "rpc", cpu["rpc_cpu"]),
        ("publish CPU per op (us, this process)", "publish_acked", cpu["publish_cpu"]),
    ):
        h, r = res[key]["halo_bus"]["cpu_us_per_op"], res[key]["raw_nats_py"]["cpu_us_per_op"]
        print(f"{name:<40}{h:>12,.1f}{r:>14,.1f}{ratio:>9.2f}{ratio - 1:>+10.0%}  (info)")
    print("\nratio = halo-bus time per operation / raw time per operation (for msg/s: raw rate / halo rate)")


def nats_server_version() -> str:
    try:
        out = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or out.stderr.strip()
    except Exception as exc:  # noqa: BLE001 - informational only
        return f"unknown ({exc})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run for a smoke test")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per side (default 10; quick 4)")
    parser.add_argument("-n", type=int, default=None, help="operations per round per side (default 1000; quick 150)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up operations per side (default 300; quick 50)")
    parser.add_argument(
        "--with-tracing",
        dest="sdk_tracer",
        action="store_true",
        help="install the OTel SDK tracer (in-memory exporter) to measure the cost of tracing when on",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (4 if args.quick else 10)
    args.n = args.n or (150 if args.quick else 1000)
    args.warmup = args.warmup if args.warmup is not None else (50 if args.quick else 300)
    if args.rounds < 2 or args.n < 1:
        parser.error("--rounds must be >= 2 (so both sides go first) and -n >= 1")

    res = asyncio.run(run(args.rounds, args.n, args.warmup, args.sdk_tracer))
    print_table(res, args)

    out = {
        "benchmark": "bus",
        "baseline": "raw nats-py (nc.request echo responder; js.publish)",
        "target_overhead": TARGET_OVERHEAD,
        "config": {
            "rounds": args.rounds,
            "ops_per_round": args.n,
            "warmup": args.warmup,
            "quick": args.quick,
            "sdk_tracer": args.sdk_tracer,
        },
        "environment": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "nats_server": nats_server_version(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        **res,
        "pass": all(v == "PASS" for v in res["verdicts"].values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
