"""Registry at scale: search and overlay latency on a big SQLite database, and sustained ingest.

Usage::

    python benchmarks/registry/run.py            # 100,000 runs, 10 million metric points (~2-4 min on 2 cores)
    python benchmarks/registry/run.py --quick    # 2,000 runs, 200,000 points (seconds)
    python benchmarks/registry/run.py --runs 50000 --points 5000000 --long-steps 50000

What is measured (all through ``RegistryStore``, the code the RPC handlers call):

1. **search** — filtered, sorted, paginated queries of the kinds the CLI/dashboard send (status +
   newest first with an offset; method + model substring by duration; tag + backend; a date window
   over failed/cancelled runs; evaluated runs sorted by last loss), each returning the page, its
   total and the page's tags/last metrics. p50/p95 in ms; target p95 < 50 ms. Facet counts are
   timed separately (not part of the target).
2. **overlay** — ``compare`` of 8 long runs (``--long-steps`` steps, loss + reward), downsampled on
   the server to 500 points per curve, plus the config diff. p50/p95 in ms.
3. **ingest** — progressed events with 10 metrics each, into the full database:
   a. through NATS: events pre-published to a private nats-server, then a real ``Registry`` service
      drains them through its durable consumer (decode, batch, commit, ack): points/s, target > 50,000;
   b. the core alone, batched (500 events per transaction) vs the baseline a per-event consumer
      would do (one transaction per event), side by side in one run: points/s and the ratio.

The database is built directly (bulk inserts) after the registry's own migrations, in a temporary
HALO_HOME (``--keep`` to leave it). Results go to ``benchmarks/results/registry.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from halo_registry.core.ingest import rebuild_rollups
from halo_registry.core.store import RegistryStore
from halo_schemas.events import RunProgressed, RunStarted
from halo_schemas.registry import RunCompareRequest, RunSearch

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "registry.json"
TARGET_SEARCH_P95_MS = 50.0
TARGET_INGEST_POINTS_S = 50_000.0

METHODS = ("sft", "sft", "sft", "dpo", "dpo", "grpo", "orpo", "rm", "raft")
MODELS = ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-7B-Instruct",
          "meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-3B-Instruct", "meta-llama/Llama-3.1-8B-Instruct",
          "mistralai/Mistral-7B-Instruct-v0.3", "google/gemma-2-2b-it", "microsoft/Phi-3.5-mini-instruct",
          "HuggingFaceTB/SmolLM2-360M-Instruct", "tiny-llama", "tiny-qwen2")
BACKENDS = ("cuda", "cuda", "cuda", "rocm", "mps", "mlx", "cpu")
STATUSES = ("succeeded",) * 14 + ("failed",) * 3 + ("cancelled", "running")
TAGS = tuple(f"exp-{i:02d}" for i in range(40)) + ("baseline", "ablation", "best", "prod", "sweep")
METRIC_NAMES = ("loss", "reward", "lr", "grad_norm")
INGEST_METRICS = ("loss", "lr", "grad_norm", "tokens_per_s", "memory_bytes", "reward", "kl", "entropy", "epoch",
                  "power_watts")
T0 = datetime(2025, 1, 1, tzinfo=UTC)


# ---- building the database -------------------------------------------------------------------
def build(store: RegistryStore, n_runs: int, n_points: int, long_steps: int, seed: int = 1) -> dict[str, Any]:
    """Fill the (migrated, empty) SQLite database: runs, tags, evals, metric points, stats, rollups."""
    rng = random.Random(seed)
    raw = store.db.engine.raw_connection()
    cur = raw.cursor()
    cur.execute("BEGIN")
    cur.executemany("INSERT INTO metric_names (id, name) VALUES (?, ?)", list(enumerate(METRIC_NAMES, 1)))
    long_points = 8 * 2 * long_steps
    short_runs = n_runs - 8
    steps_per_run = max(1, round((n_points - long_points) / max(short_runs, 1) / len(METRIC_NAMES)))
    runs, tags, evals = [], [], []
    for pk in range(1, n_runs + 1):
        long = pk <= 8
        created = T0 + timedelta(seconds=rng.uniform(0, 365 * 86400))
        status = "succeeded" if long else rng.choice(STATUSES)
        steps = long_steps if long else steps_per_run
        dur = steps * rng.uniform(0.5, 3.0)
        finished = None if status == "running" else (created + timedelta(seconds=dur)).strftime("%Y-%m-%d %H:%M:%S.%f")
        spec = json.dumps({"lr": rng.choice([1e-5, 2e-5, 5e-5, 1e-4, 2e-4]), "epochs": rng.randint(1, 3),
                           "lora": {"rank": rng.choice([8, 16, 32, 64]), "alpha": 16}, "seed": rng.randint(0, 99)})
        c = created.strftime("%Y-%m-%d %H:%M:%S.%f")
        runs.append((pk, f"run-{pk:010d}", f"name-{pk}", rng.choice(METHODS), rng.choice(MODELS), rng.choice(BACKENDS),
                     status, c, c, finished, c, None if status == "running" else dur, steps - 1, steps, spec, "", "local"))
        for t in rng.sample(TAGS, rng.choice((0, 1, 1, 2, 2, 3))):
            tags.append((pk, t))
        if rng.random() < 0.2:
            for task in rng.sample(("gsm8k", "mbpp", "humaneval", "arc", "mmlu"), 2):
                evals.append((pk, task, "accuracy", rng.random(), 1, c))
    cur.executemany(
        "INSERT INTO runs (pk, run_id, name, method, base_model, backend, status, created_at, started_at, finished_at, "
        "last_event_at, duration_s, last_step, total_steps, spec, notes, origin) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", runs)
    cur.executemany("INSERT INTO run_tags (run_pk, tag) VALUES (?, ?)", tags)
    cur.executemany("INSERT INTO eval_results (run_pk, task, metric, value, higher_is_better, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)", evals)
    raw.commit()

    total = 0
    chunk: list[tuple[int, int, int, float]] = []
    stats: list[tuple[int, int, int, int, float]] = []

    def flush() -> None:
        cur.execute("BEGIN")
        cur.executemany("INSERT INTO metrics (run_pk, name_id, step, value) VALUES (?, ?, ?, ?)", chunk)
        cur.executemany("INSERT INTO metric_stats (run_pk, name_id, first_step, last_step, last_value) "
                        "VALUES (?, ?, ?, ?, ?)", stats)
        raw.commit()
        chunk.clear()
        stats.clear()

    for pk in range(1, n_runs + 1):
        long = pk <= 8
        steps = long_steps if long else steps_per_run
        names = (1, 2) if long else (1, 2, 3, 4)
        base = rng.uniform(0.8, 2.5)
        for nid in names:
            if nid == 1:
                vals = [base + 2.0 / (1 + 0.002 * s) + rng.gauss(0, 0.02) for s in range(steps)]
            elif nid == 2:
                vals = [min(1.0, s / steps) + rng.gauss(0, 0.05) for s in range(steps)]
            elif nid == 3:
                vals = [1e-4 * (1 - s / steps) for s in range(steps)]
            else:
                vals = [abs(rng.gauss(1.0, 0.3)) for _ in range(steps)]
            chunk.extend((pk, nid, s, v) for s, v in enumerate(vals))
            stats.append((pk, nid, 0, steps - 1, vals[-1]))
            total += steps
        if len(chunk) >= 500_000:
            flush()
    if chunk:
        flush()
    cur.close()
    raw.close()
    with store.db.write() as conn:  # what ingest maintains as it goes
        rebuild_rollups(conn)
    return {"runs": n_runs, "points": total, "steps_per_short_run": steps_per_run, "long_runs": 8,
            "long_steps": long_steps, "tags": len(tags), "eval_results": len(evals)}


# ---- timing ----------------------------------------------------------------------------------
def timed(fn: Callable[[], Any], n: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return {"p50_ms": statistics.median(samples), "p95_ms": samples[min(len(samples) - 1, int(0.95 * len(samples)))],
            "max_ms": samples[-1], "n": n}


def search_queries(rng: random.Random, n_runs: int) -> list[Callable[[], RunSearch]]:
    """Query generators, each a realistic filtered + sorted + paginated search."""
    def day(d: int) -> datetime:
        return T0 + timedelta(days=d)

    return [
        lambda: RunSearch(status=["succeeded"], sort="-created_at", limit=50, offset=rng.randrange(0, 1000, 50)),
        lambda: RunSearch(method=[rng.choice(METHODS)], model=rng.choice(("qwen", "llama", "7b", "mistral")),
                          sort="-duration_s", limit=25),
        lambda: RunSearch(tag=[rng.choice(TAGS)], backend=[rng.choice(BACKENDS)], sort="-created_at", limit=50),
        lambda: (lambda d: RunSearch(status=["failed", "cancelled"], since=day(d), until=day(d + 30), sort="created_at",
                                     limit=50))(rng.randrange(0, 330)),
        lambda: RunSearch(has_eval=True, method=["sft"], sort="metric.loss", limit=20),
        lambda: RunSearch(text=f"name-{rng.randrange(1, n_runs)}", limit=10),
    ]


async def nats_ingest(home: Path, n_events: int, batch: int) -> dict[str, float]:
    """Pre-publish ``n_events`` progressed events to a private nats-server, then time a real
    Registry service draining them into the database."""
    from halo_bus import NatsBus, subjects
    from halo_common.natsproc import NatsProcess
    from halo_registry.service import Registry
    from halo_registry.settings import RegistrySettings

    nats = NatsProcess.start(home / "nats", log_file=home / "nats.log")
    try:
        pub = await NatsBus.connect(nats.url, name="bench-trainer")
        run_ids = [f"run-ingest-{i:04d}" for i in range(max(1, n_events // 5000))]
        for rid in run_ids:
            ev = RunStarted(run_id=rid, service="trainer-torch", seq=0, method="grpo", base_model="bench", backend="cpu")
            await pub.publish_event(subjects.run_event("trainer-torch", rid, "started"), ev, msg_id=f"{rid}:0")
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(256)

        async def one(i: int) -> None:
            rid = run_ids[i % len(run_ids)]
            step = i // len(run_ids)
            ev = RunProgressed(run_id=rid, service="trainer-torch", seq=step + 1, step=step,
                               metrics={m: float(step % 97) + k for k, m in enumerate(INGEST_METRICS)})
            async with sem:
                await pub.publish_event(subjects.run_event("trainer-torch", rid, "progressed"), ev,
                                        msg_id=f"{rid}:{step + 1}")

        await asyncio.gather(*(one(i) for i in range(n_events)))
        publish_s = time.perf_counter() - t0
        await pub.close()

        settings = RegistrySettings(home=home, nats_url=nats.url, ingest_batch=batch)
        bus = await NatsBus.connect(nats.url, name="registry")
        reg = Registry(settings, bus)
        await reg.start()
        # Sustained rate: from the end of start-up (opening the database is not ingest).
        t0, points0 = time.perf_counter(), reg.ingest.totals.points
        want = n_events + len(run_ids)
        while reg.ingest.totals.events < want:  # noqa: ASYNC110 - polling a counter, 10 ms resolution
            await asyncio.sleep(0.01)
        seconds = time.perf_counter() - t0
        points = reg.ingest.totals.points - points0
        await reg.stop()
        await bus.close()
    finally:
        nats.stop()
    return {"events": n_events, "points": points, "seconds": seconds, "points_per_s": points / seconds,
            "publish_s": publish_s, "batch": batch}


def core_ingest(store: RegistryStore, n_events: int, batch: int, per_event: bool) -> dict[str, float]:
    """Apply progressed events straight to the store: in batches, or one transaction per event."""
    rid = f"run-core-{'single' if per_event else 'batched'}"
    store.apply_events([RunStarted(run_id=rid, service="trainer-torch", seq=0, method="grpo", backend="cpu")])
    events = [RunProgressed(run_id=rid, service="trainer-torch", seq=i + 1, step=i,
                            metrics={m: float(i % 97) + k for k, m in enumerate(INGEST_METRICS)})
              for i in range(n_events)]
    t0 = time.perf_counter()
    points = 0
    size = 1 if per_event else batch
    for i in range(0, n_events, size):
        points += store.apply_events(events[i:i + size]).points
    seconds = time.perf_counter() - t0
    return {"events": n_events, "points": points, "seconds": seconds, "points_per_s": points / seconds,
            "transaction_events": size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="Smoke run: 2,000 runs, 200,000 points.")
    ap.add_argument("--runs", type=int, default=None, help="Runs in the database (default 100,000).")
    ap.add_argument("--points", type=int, default=None, help="Metric points in the database (default 10,000,000).")
    ap.add_argument("--long-steps", type=int, default=None, help="Steps of each of the 8 overlaid runs (default 20,000).")
    ap.add_argument("--queries", type=int, default=None, help="Timed queries per measurement.")
    ap.add_argument("--ingest-events", type=int, default=None, help="Events for each ingest measurement.")
    ap.add_argument("--batch", type=int, default=500, help="Events per ingest transaction.")
    ap.add_argument("--home", type=Path, default=None, help="HALO_HOME to build in (default: a temporary one).")
    ap.add_argument("--keep", action="store_true", help="Keep the temporary HALO_HOME.")
    args = ap.parse_args(argv)
    n_runs = args.runs or (2_000 if args.quick else 100_000)
    n_points = args.points or (200_000 if args.quick else 10_000_000)
    long_steps = args.long_steps or (2_000 if args.quick else 20_000)
    n_queries = args.queries or (60 if args.quick else 300)
    n_ingest = args.ingest_events or (3_000 if args.quick else 20_000)
    if n_runs < 9:
        ap.error("--runs must be at least 9 (8 long runs are overlaid)")

    tmp = None
    if args.home is None:
        tmp = tempfile.TemporaryDirectory(prefix="halo-bench-registry-")
        home = Path(tmp.name)
    else:
        home = args.home
        home.mkdir(parents=True, exist_ok=True)
    db_file = home / "forge.db"
    if db_file.exists():
        ap.error(f"{db_file} exists; use an empty --home")
    print(f"building {n_runs:,} runs / {n_points:,} points in {db_file} …", flush=True)
    store = RegistryStore.open(None, home, version="bench")
    t0 = time.perf_counter()
    shape = build(store, n_runs, n_points, long_steps)
    build_s = time.perf_counter() - t0
    size_mb = sum(p.stat().st_size for p in home.glob("forge.db*")) / 2**20
    print(f"  built in {build_s:.1f}s: {shape['points']:,} points, database {size_mb:.0f} MiB", flush=True)

    rng = random.Random(42)
    gens = search_queries(rng, n_runs)
    per_kind = {}
    for i, gen in enumerate(gens):
        kind = ["status+newest+offset", "method+model+by-duration", "tag+backend", "date-window+failed",
                "evaluated+by-last-loss", "text"][i]
        r = timed(lambda gen=gen: store.search(gen()), max(10, n_queries // len(gens)))
        per_kind[kind] = r
    # The headline: every kind mixed, in random order.
    mixed = timed(lambda: store.search(rng.choice(gens)()), n_queries)
    facets = timed(lambda: store.search(RunSearch(status=["succeeded"], facets=True, limit=50)), max(10, n_queries // 10))
    long_ids = [f"run-{pk:010d}" for pk in range(1, 9)]
    overlay = timed(lambda: store.compare(RunCompareRequest(run_ids=long_ids, metrics=["loss", "reward"],
                                                            max_points=500)), max(10, n_queries // 6))
    short_ids = [f"run-{rng.randrange(9, n_runs + 1):010d}" for _ in range(8)]
    overlay_short = timed(lambda: store.compare(RunCompareRequest(run_ids=short_ids, max_points=500)),
                          max(10, n_queries // 6))

    print("ingest …", flush=True)
    batched = core_ingest(store, n_ingest, args.batch, per_event=False)
    single = core_ingest(store, max(200, n_ingest // 10), args.batch, per_event=True)
    store.close()
    nats = asyncio.run(nats_ingest(home, n_ingest, args.batch))

    result = {
        "benchmark": "registry",
        "when": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpus()},
        "database": {**shape, "engine": "sqlite", "size_mib": round(size_mb, 1), "build_s": round(build_s, 1)},
        "search": {"mixed": mixed, "by_kind": per_kind, "with_facets": facets},
        "overlay_8_long_runs": {**overlay, "points_per_run": 2 * long_steps, "max_points": 500},
        "overlay_8_short_runs": overlay_short,
        "ingest": {"nats_end_to_end": nats, "core_batched": batched, "core_per_event_baseline": single,
                   "batched_vs_per_event_ratio": batched["points_per_s"] / single["points_per_s"]},
        "targets": {"search_p95_ms": TARGET_SEARCH_P95_MS, "ingest_points_per_s": TARGET_INGEST_POINTS_S},
    }
    result["targets"]["search_p95_ratio"] = mixed["p95_ms"] / TARGET_SEARCH_P95_MS
    result["targets"]["ingest_ratio"] = nats["points_per_s"] / TARGET_INGEST_POINTS_S
    result["targets"]["met"] = (mixed["p95_ms"] < TARGET_SEARCH_P95_MS and nats["points_per_s"] > TARGET_INGEST_POINTS_S)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    _report(result)
    if tmp is not None:
        if args.keep:
            print(f"kept {home}")
            tmp._finalizer.detach()  # type: ignore[attr-defined]
        else:
            tmp.cleanup()
    return 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _report(r: dict[str, Any]) -> None:
    db = r["database"]
    print(f"\nregistry benchmark — SQLite, {db['runs']:,} runs, {db['points']:,} metric points ({db['size_mib']} MiB)")
    print(f"{'measurement':<44}{'p50 ms':>10}{'p95 ms':>10}")
    s = r["search"]
    print(f"{'search (mixed filtered/sorted/paginated)':<44}{s['mixed']['p50_ms']:>10.2f}{s['mixed']['p95_ms']:>10.2f}")
    for kind, v in s["by_kind"].items():
        print(f"{'  ' + kind:<44}{v['p50_ms']:>10.2f}{v['p95_ms']:>10.2f}")
    print(f"{'search + facets (not in target)':<44}{s['with_facets']['p50_ms']:>10.2f}{s['with_facets']['p95_ms']:>10.2f}")
    o = r["overlay_8_long_runs"]
    label = f"overlay 8 runs x {o['points_per_run']:,} pts -> 500/curve"
    print(f"{label:<44}{o['p50_ms']:>10.2f}{o['p95_ms']:>10.2f}")
    o2 = r["overlay_8_short_runs"]
    print(f"{'overlay 8 typical runs':<44}{o2['p50_ms']:>10.2f}{o2['p95_ms']:>10.2f}")
    i = r["ingest"]
    print(f"\n{'ingest':<44}{'points/s':>12}")
    print(f"{'through NATS (durable consumer, batched)':<44}{i['nats_end_to_end']['points_per_s']:>12,.0f}")
    print(f"{'core, batched (' + str(i['core_batched']['transaction_events']) + ' events/txn)':<44}"
          f"{i['core_batched']['points_per_s']:>12,.0f}")
    print(f"{'core, baseline: one transaction per event':<44}{i['core_per_event_baseline']['points_per_s']:>12,.0f}")
    print(f"batched vs per-event: {i['batched_vs_per_event_ratio']:.1f}x")
    t = r["targets"]
    print(f"\ntargets: search p95 {s['mixed']['p95_ms']:.2f} ms / {t['search_p95_ms']:.0f} ms = {t['search_p95_ratio']:.2f} "
          f"({'met' if t['search_p95_ratio'] < 1 else 'MISSED'}); ingest {i['nats_end_to_end']['points_per_s']:,.0f} / "
          f"{t['ingest_points_per_s']:,.0f} points/s = {t['ingest_ratio']:.2f}x "
          f"({'met' if t['ingest_ratio'] > 1 else 'MISSED'})")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
