"""Registry at scale: search, dashboard (search + facets) and overlay latency on a big database, and ingest.

Usage::

    python benchmarks/registry/run.py            # SQLite, 100,000 runs, 10 million metric points (~2-4 min on 2 cores)
    python benchmarks/registry/run.py --engine postgres   # the same on PostgreSQL (HALO_BENCH_POSTGRES_URL)
    python benchmarks/registry/run.py --engine both --points 1000000   # both, one after the other
    python benchmarks/registry/run.py --quick    # 2,000 runs, 200,000 points (seconds)
    python benchmarks/registry/run.py --runs 50000 --points 5000000 --long-steps 50000

What is measured (all through ``RegistryStore``, the code the RPC handlers call):

1. **search** — filtered, sorted, paginated queries of the kinds the CLI/dashboard send (status +
   newest first with an offset; method + model substring by duration; tag + backend; a date window
   over failed/cancelled runs; evaluated runs sorted by last loss), each returning the page, its
   total and the page's tags/last metrics. p50/p95 in ms; target p95 < 50 ms.
   **dashboard** — search + facets together, as the run table of a dashboard asks after each facet click:
   random combinations of status / method / backend / one tag / a model substring, facet counts of status,
   method, backend, base model and tag, newest first, one of the first pages. Target p95 < 50 ms.
2. **overlay** — ``compare`` of 8 long runs (``--long-steps`` steps, loss + reward), downsampled on
   the server to 500 points per curve, plus the config diff. p50/p95 in ms.
3. **ingest** — progressed events with 10 metrics each, into the full database:
   a. through NATS: events pre-published to a private nats-server, then a real ``Registry`` service
      drains them through its durable consumer (decode, batch, commit, ack): points/s, target > 50,000;
   b. the core alone, batched (500 events per transaction) vs the baseline a per-event consumer
      would do (one transaction per event), side by side in one run: points/s and the ratio.

The database is built directly (bulk inserts, which fire the registry's triggers like any write) after the
registry's own migrations: SQLite in a temporary HALO_HOME (``--keep`` to leave it), PostgreSQL in a fresh
schema of ``HALO_BENCH_POSTGRES_URL`` (default the local trust-auth ``test`` database), dropped afterwards, and
``VACUUM ANALYZE``d after the bulk load as autovacuum would, then ``CHECKPOINT``ed (the timed queries do not race
the checkpointer writing out the load). The load average is recorded with every figure (shared
machines). Results go to ``benchmarks/results/registry.json`` (one entry per engine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
    """Fill the (migrated, empty) database: runs, tags, evals, metric points, stats, rollups."""
    rng = random.Random(seed)
    raw = store.db.engine.raw_connection()
    sqlite = store.db.is_sqlite
    cur = _Cursor(raw.cursor(), sqlite)
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
                evals.append((pk, task, "accuracy", rng.random(), True, c))
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
    if not sqlite:  # explicit ids above: move the sequences past them, as inserts through the registry would
        cur.execute("SELECT setval(pg_get_serial_sequence('runs', 'pk'), (SELECT max(pk) FROM runs))")
        cur.execute("SELECT setval(pg_get_serial_sequence('metric_names', 'id'), (SELECT max(id) FROM metric_names))")
        raw.commit()
    cur.close()
    raw.close()
    with store.db.write() as conn:  # what ingest maintains as it goes
        rebuild_rollups(conn)
    if not sqlite:
        # dead tuples reclaimed and planner statistics gathered, as autovacuum does after a bulk load (the
        # trigger-kept count rows were each updated thousands of times by it)
        with store.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
            # and the bulk load's dirty pages written out now, so the timed queries do not race the
            # checkpointer flushing a gigabyte (steady state, as a registry is between bulk loads)
            try:
                conn.exec_driver_sql("CHECKPOINT")
            except Exception as exc:  # needs superuser or pg_checkpoint: then measure without it
                print(f"  (no CHECKPOINT: {str(exc).splitlines()[0]})", flush=True)
    return {"runs": n_runs, "points": total, "steps_per_short_run": steps_per_run, "long_runs": 8,
            "long_steps": long_steps, "tags": len(tags), "eval_results": len(evals)}


class _Cursor:
    """A DB-API cursor taking SQLite's ``?`` placeholders on either engine (psycopg wants ``%s``, and
    opens its transactions itself)."""

    def __init__(self, cur: Any, sqlite: bool) -> None:
        self.cur, self.sqlite = cur, sqlite

    def _sql(self, sql: str) -> str:
        return sql if self.sqlite else sql.replace("?", "%s")

    def execute(self, sql: str) -> None:
        if self.sqlite or sql != "BEGIN":
            self.cur.execute(self._sql(sql))

    def executemany(self, sql: str, rows: list[Any]) -> None:
        if rows:
            self.cur.executemany(self._sql(sql), rows)

    def close(self) -> None:
        self.cur.close()


# ---- timing ----------------------------------------------------------------------------------
def timed(fn: Callable[[], Any], n: int, warmup: int = 3) -> dict[str, float]:
    """Wall p50/p95/max in ms, and this process's CPU time per call (p50/p95): on SQLite that is all the
    work of a query and much less sensitive to other processes on a shared machine than wall time."""
    for _ in range(warmup):
        fn()
    samples, cpu = [], []
    for _ in range(n):
        t, c = time.perf_counter(), time.process_time()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    samples.sort()
    cpu.sort()

    def p95(xs: list[float]) -> float:
        return xs[min(len(xs) - 1, int(0.95 * len(xs)))]

    return {"p50_ms": statistics.median(samples), "p95_ms": p95(samples), "max_ms": samples[-1], "n": n,
            "cpu_p50_ms": statistics.median(cpu), "cpu_p95_ms": p95(cpu), "load_avg": round(os.getloadavg()[0], 2)}


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


def dashboard_query(rng: random.Random) -> RunSearch:
    """A dashboard's run table after some facet clicks: filters with their facet counts, newest first."""
    f: dict[str, Any] = {}
    if rng.random() < 0.6:
        f["status"] = rng.sample(("succeeded", "failed", "cancelled", "running"), rng.choice((1, 1, 2)))
    if rng.random() < 0.4:
        f["method"] = [rng.choice(METHODS)]
    if rng.random() < 0.3:
        f["backend"] = [rng.choice(BACKENDS)]
    if rng.random() < 0.3:
        f["tag"] = [rng.choice(TAGS)]
    if rng.random() < 0.2:
        f["model"] = rng.choice(("qwen", "llama", "7b", "instruct"))
    return RunSearch(**f, facets=True, sort="-created_at", limit=50, offset=50 * rng.randrange(0, 3))


async def nats_ingest(home: Path, n_events: int, batch: int, database_url: str | None = None) -> dict[str, float]:
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

        settings = RegistrySettings(home=home, nats_url=nats.url, ingest_batch=batch, database_url=database_url)
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
    ap.add_argument("--engine", choices=("sqlite", "postgres", "both"), default="sqlite",
                    help="Database engine(s) to measure (PostgreSQL at HALO_BENCH_POSTGRES_URL).")
    ap.add_argument("--runs", type=int, default=None, help="Runs in the database (default 100,000).")
    ap.add_argument("--points", type=int, default=None, help="Metric points in the database (default 10,000,000).")
    ap.add_argument("--long-steps", type=int, default=None, help="Steps of each of the 8 overlaid runs (default 20,000).")
    ap.add_argument("--queries", type=int, default=None, help="Timed queries per measurement.")
    ap.add_argument("--ingest-events", type=int, default=None, help="Events for each ingest measurement.")
    ap.add_argument("--batch", type=int, default=500, help="Events per ingest transaction.")
    ap.add_argument("--no-ingest", action="store_true", help="Skip the ingest measurements.")
    ap.add_argument("--home", type=Path, default=None, help="HALO_HOME to build in (default: a temporary one).")
    ap.add_argument("--keep", action="store_true", help="Keep the temporary HALO_HOME (SQLite).")
    args = ap.parse_args(argv)
    if (args.runs or 100_000) < 9:
        ap.error("--runs must be at least 9 (8 long runs are overlaid)")
    engines = ["sqlite", "postgres"] if args.engine == "both" else [args.engine]
    results = {engine: bench_engine(engine, args) for engine in engines}
    met = all(r["targets"]["met"] for r in results.values())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"benchmark": "registry", "when": datetime.now(UTC).isoformat(),
                                   "engines": results, "met": met}, indent=2))
    print(f"\nresults: {RESULTS}")
    return 0


def _postgres_schema() -> tuple[str, Callable[[], None]]:
    """A fresh schema on the benchmark PostgreSQL: (URL selecting it, drop function)."""
    import uuid

    import sqlalchemy

    base = os.environ.get("HALO_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')

    def drop() -> None:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()

    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}", drop


def bench_engine(engine: str, args: argparse.Namespace) -> dict[str, Any]:
    n_runs = args.runs or (2_000 if args.quick else 100_000)
    n_points = args.points or (200_000 if args.quick else 10_000_000)
    long_steps = args.long_steps or (2_000 if args.quick else 20_000)
    n_queries = args.queries or (60 if args.quick else 300)
    n_ingest = args.ingest_events or (3_000 if args.quick else 20_000)
    tmp = None
    if args.home is None:
        tmp = tempfile.TemporaryDirectory(prefix="halo-bench-registry-")
        home = Path(tmp.name)
    else:
        home = args.home / engine
        home.mkdir(parents=True, exist_ok=True)
    url, drop = _postgres_schema() if engine == "postgres" else (None, lambda: None)
    db_file = home / "forge.db"
    if engine == "sqlite" and db_file.exists():
        raise SystemExit(f"{db_file} exists; use an empty --home")
    try:
        print(f"[{engine}] building {n_runs:,} runs / {n_points:,} points …", flush=True)
        store = RegistryStore.open(url, home, version="bench")
        t0 = time.perf_counter()
        shape = build(store, n_runs, n_points, long_steps)
        build_s = time.perf_counter() - t0
        if engine == "sqlite":
            size_mb = sum(p.stat().st_size for p in home.glob("forge.db*")) / 2**20
        else:
            with store.db.read() as conn:
                size_mb = conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar() / 2**20
        print(f"  built in {build_s:.1f}s: {shape['points']:,} points, database {size_mb:.0f} MiB", flush=True)

        rng = random.Random(42)
        gens = search_queries(rng, n_runs)
        per_kind = {}
        for i, gen in enumerate(gens):
            kind = ["status+newest+offset", "method+model+by-duration", "tag+backend", "date-window+failed",
                    "evaluated+by-last-loss", "text"][i]
            per_kind[kind] = timed(lambda gen=gen: store.search(gen()), max(10, n_queries // len(gens)))
        # The headline: every kind mixed, in random order.
        mixed = timed(lambda: store.search(rng.choice(gens)()), n_queries)
        dashboard = timed(lambda: store.search(dashboard_query(rng)), n_queries)
        facets = timed(lambda: store.search(RunSearch(status=["succeeded"], facets=True, limit=50)),
                       max(10, n_queries // 10))
        long_ids = [f"run-{pk:010d}" for pk in range(1, 9)]
        overlay = timed(lambda: store.compare(RunCompareRequest(run_ids=long_ids, metrics=["loss", "reward"],
                                                                max_points=500)), max(10, n_queries // 6))
        short_ids = [f"run-{rng.randrange(9, n_runs + 1):010d}" for _ in range(8)]
        overlay_short = timed(lambda: store.compare(RunCompareRequest(run_ids=short_ids, max_points=500)),
                              max(10, n_queries // 6))
        ingest: dict[str, Any] = {}
        if not args.no_ingest:
            print("ingest …", flush=True)
            batched = core_ingest(store, n_ingest, args.batch, per_event=False)
            single = core_ingest(store, max(200, n_ingest // 10), args.batch, per_event=True)
            store.close()
            nats = asyncio.run(nats_ingest(home, n_ingest, args.batch, url))
            ingest = {"nats_end_to_end": nats, "core_batched": batched, "core_per_event_baseline": single,
                      "batched_vs_per_event_ratio": batched["points_per_s"] / single["points_per_s"]}
        else:
            store.close()
    finally:
        drop()
    result = {
        "engine": engine,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpus()},
        "database": {**shape, "engine": engine, "size_mib": round(size_mb, 1), "build_s": round(build_s, 1)},
        "search": {"mixed": mixed, "by_kind": per_kind, "dashboard_search_and_facets": dashboard,
                   "status_filter_with_facets": facets},
        "overlay_8_long_runs": {**overlay, "points_per_run": 2 * long_steps, "max_points": 500},
        "overlay_8_short_runs": overlay_short,
        "ingest": ingest,
        "targets": {"search_p95_ms": TARGET_SEARCH_P95_MS, "ingest_points_per_s": TARGET_INGEST_POINTS_S},
    }
    t = result["targets"]
    t["search_p95_ratio"] = mixed["p95_ms"] / TARGET_SEARCH_P95_MS
    t["dashboard_p95_ratio"] = dashboard["p95_ms"] / TARGET_SEARCH_P95_MS
    t["ingest_ratio"] = ingest["nats_end_to_end"]["points_per_s"] / TARGET_INGEST_POINTS_S if ingest else None
    t["met"] = (mixed["p95_ms"] < TARGET_SEARCH_P95_MS and dashboard["p95_ms"] < TARGET_SEARCH_P95_MS
                and (not ingest or ingest["nats_end_to_end"]["points_per_s"] > TARGET_INGEST_POINTS_S))
    _report(result)
    if tmp is not None:
        if args.keep:
            print(f"kept {home}")
            tmp._finalizer.detach()  # type: ignore[attr-defined]
        else:
            tmp.cleanup()
    return result


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _report(r: dict[str, Any]) -> None:
    db = r["database"]

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    print(f"\nregistry benchmark — {r['engine']}, {db['runs']:,} runs, {db['points']:,} metric points "
          f"({db['size_mib']} MiB)")
    print(f"{'measurement':<48}{'p50 ms':>10}{'p95 ms':>10}{'cpu p95':>10}{'load':>7}")
    s = r["search"]

    def line(label: str, v: dict[str, Any]) -> None:
        print(f"{label:<48}{v['p50_ms']:>10.2f}{v['p95_ms']:>10.2f}{v['cpu_p95_ms']:>10.2f}{v['load_avg']:>7.1f}")

    line("search (mixed filtered/sorted/paginated)", s["mixed"])
    for kind, v in s["by_kind"].items():
        line("  " + kind, v)
    line("dashboard: search + facets together (mixed)", s["dashboard_search_and_facets"])
    line("  status filter + facets", s["status_filter_with_facets"])
    o = r["overlay_8_long_runs"]
    line(f"overlay 8 runs x {o['points_per_run']:,} pts -> 500/curve", o)
    line("overlay 8 typical runs", r["overlay_8_short_runs"])
    t = r["targets"]
    i = r["ingest"]
    if i:
        print(f"\n{'ingest':<48}{'points/s':>12}")
        print(f"{'through NATS (durable consumer, batched)':<48}{i['nats_end_to_end']['points_per_s']:>12,.0f}")
        print(f"{'core, batched (' + str(i['core_batched']['transaction_events']) + ' events/txn)':<48}"
              f"{i['core_batched']['points_per_s']:>12,.0f}")
        print(f"{'core, baseline: one transaction per event':<48}{i['core_per_event_baseline']['points_per_s']:>12,.0f}")
        print(f"batched vs per-event: {i['batched_vs_per_event_ratio']:.1f}x")
    print(f"\n[{r['engine']}] search p95 {s['mixed']['p95_ms']:.2f} ms / {t['search_p95_ms']:.0f} ms = "
          f"{t['search_p95_ratio']:.2f} {verdict(t['search_p95_ratio'] < 1)}; dashboard (search + facets) p95 "
          f"{s['dashboard_search_and_facets']['p95_ms']:.2f} ms / {t['search_p95_ms']:.0f} ms = "
          f"{t['dashboard_p95_ratio']:.2f} {verdict(t['dashboard_p95_ratio'] < 1)}"
          + (f"; ingest {i['nats_end_to_end']['points_per_s']:,.0f} / {t['ingest_points_per_s']:,.0f} points/s = "
             f"{t['ingest_ratio']:.2f}x {verdict(t['ingest_ratio'] > 1)}" if i else ""))


if __name__ == "__main__":
    sys.exit(main())
