"""verifier-sandbox's parallel, sandboxed batch vs a sequential ``subprocess.run`` loop, side by side.

Usage::

    python benchmarks/verifier/run.py            # 200 programs, 4 rounds (~2 min on 2 cores)
    python benchmarks/verifier/run.py --quick    # 40 programs, 2 rounds (seconds)

Both sides run in short alternating slices (25 programs; which side goes first alternates), so
load from other processes on a shared machine hits both alike. Note that on a busy 2-core machine
the comparison is still tilted towards the baseline: a sequential loop loses nothing when another
process occupies the second core, the parallel batch does — check the load average printed per round.

The question: a trainer needs rewards for N C completions (compile with gcc, run on stdin, compare
stdout). What does Halo Forge's ``gcc`` verifier — a separate service reached over NATS, every
compile and run in a bubblewrap sandbox with limits, ``workers`` in parallel — give, compared with
what a user would otherwise write: a sequential loop of ``subprocess.run(gcc …)`` +
``subprocess.run(./prog)`` on the host, no sandbox?

Both sides compile with the same command (``gcc -O1 <flags> -Wall -Wextra main.c -o prog -lm``), run
the same 200 distinct programs with the same stdin and check the same expected output. Ours runs as
the real service process (``python -m halo_verifier_sandbox``, default workers = CPU count) on a
private nats-server, called with ``VerifierClient.verify_batch`` (cache off: every program is
compiled and run). Rounds alternate which side goes first; both are warmed up first. The ratio uses
each side's fastest round (other processes only ever add time); the median of the per-round
ratios is printed too.

To make numbers from a shared machine readable, a third side runs alongside: ``workers`` plain
loops at once in separate processes (no sandbox, no service) — the parallel ceiling the machine
offers at that moment; the service's share of that ceiling is printed.

Besides wall-clock throughput it reports CPU seconds per verification for both sides (the
baseline's children; the service's whole process tree, warm sandboxes and the compilers they
reaped included), which hardly depends on other load, and the ratio that CPU cost projects for an
idle machine.

A second measurement shows the result cache: the same number of completions where each distinct
program appears 5 times (as with GRPO groups that sample identical answers), cache on and cold at
the start, vs the same sequential loop (which compiles every copy).

Target (issue): >= 1.7x verifications/s on 2 cores for the uncached batch. Results go to
``benchmarks/results/verifier.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from halo_bus import NatsBus, subjects
from halo_clients.verifier_sandbox import VerifierClient
from halo_common.natsproc import NatsProcess
from halo_schemas.health import HealthRequest, ServiceHealth
from halo_schemas.verifiers import VerifierSpec, VerifyContext, VerifyItem

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "verifier.json"
TARGET = 1.7
GCC_FLAGS = ["-O1", "-Wall", "-Wextra"]  # what the gcc verifier uses (its -O1 default + warnings)

# Small but realistic solutions (20-40 lines): each template is parameterised by a seed so every
# program is distinct (different text, different expected output).
TEMPLATES = [
    ("""#include <stdio.h>
#include <stdlib.h>
static int cmp(const void *a, const void *b) {{ long x = *(const long *)a, y = *(const long *)b; return (x > y) - (x < y); }}
int main(void) {{
    int n; if (scanf("%d", &n) != 1) return 1;
    long *v = malloc(sizeof(long) * n);
    for (int i = 0; i < n; i++) scanf("%ld", &v[i]);
    qsort(v, n, sizeof(long), cmp);
    long acc = {seed};
    for (int i = 0; i < n; i++) acc += v[i] * (i + 1);
    printf("%ld\\n", acc);
    free(v);
    return 0;
}}
""", lambda seed, rng: _sorted_case(seed, rng)),
    ("""#include <stdio.h>
#include <string.h>
int main(void) {{
    char s[256];
    if (!fgets(s, sizeof s, stdin)) return 1;
    s[strcspn(s, "\\n")] = 0;
    int len = (int)strlen(s), vowels = 0;
    for (int i = 0; i < len; i++) if (strchr("aeiou", s[i])) vowels++;
    for (int i = len - 1; i >= 0; i--) putchar(s[i]);
    printf(" %d %d\\n", vowels, len + {seed});
    return 0;
}}
""", lambda seed, rng: _string_case(seed, rng)),
    ("""#include <stdio.h>
#include <stdbool.h>
static bool is_prime(long n) {{ if (n < 2) return false; for (long d = 2; d * d <= n; d++) if (n % d == 0) return false; return true; }}
int main(void) {{
    long lo, hi; if (scanf("%ld %ld", &lo, &hi) != 2) return 1;
    long count = 0, sum = 0;
    for (long k = lo; k <= hi; k++) if (is_prime(k)) {{ count++; sum += k; }}
    printf("%ld %ld\\n", count, sum % (1000 + {seed}));
    return 0;
}}
""", lambda seed, rng: _prime_case(seed, rng)),
    ("""#include <stdio.h>
int main(void) {{
    int n; if (scanf("%d", &n) != 1) return 1;
    unsigned long long a = 0, b = 1;
    for (int i = 0; i < n; i++) {{ unsigned long long t = (a + b) % 1000000007ULL; a = b; b = t; }}
    printf("%llu\\n", (a + {seed}) % 1000000007ULL);
    return 0;
}}
""", lambda seed, rng: _fib_case(seed, rng)),
]


def _sorted_case(seed: int, rng: random.Random) -> tuple[str, str]:
    v = [rng.randint(-50, 50) for _ in range(rng.randint(3, 12))]
    acc = seed + sum(x * (i + 1) for i, x in enumerate(sorted(v)))
    return f"{len(v)}\n{' '.join(map(str, v))}\n", f"{acc}\n"


def _string_case(seed: int, rng: random.Random) -> tuple[str, str]:
    s = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(5, 40)))
    return s + "\n", f"{s[::-1]} {sum(c in 'aeiou' for c in s)} {len(s) + seed}\n"


def _prime_case(seed: int, rng: random.Random) -> tuple[str, str]:
    lo = rng.randint(1, 500)
    hi = lo + rng.randint(10, 2000)
    primes = [k for k in range(lo, hi + 1) if k >= 2 and all(k % d for d in range(2, int(k ** 0.5) + 1))]
    return f"{lo} {hi}\n", f"{len(primes)} {sum(primes) % (1000 + seed)}\n"


def _fib_case(seed: int, rng: random.Random) -> tuple[str, str]:
    n = rng.randint(10, 5000)
    a, b = 0, 1
    for _ in range(n):
        a, b = b, (a + b) % 1_000_000_007
    return f"{n}\n", f"{(a + seed) % 1_000_000_007}\n"


@dataclass
class Program:
    source: str
    stdin: str
    expected: str


def make_programs(n: int, start_seed: int) -> list[Program]:
    rng = random.Random(start_seed)
    out = []
    for i in range(n):
        template, case = TEMPLATES[i % len(TEMPLATES)]
        seed = start_seed + i
        stdin, expected = case(seed, rng)
        out.append(Program(template.format(seed=seed), stdin, expected))
    return out


# ---- the baseline ----------------------------------------------------------------------------------


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (the baseline's gcc and programs)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def tree_cpu(pid: int) -> float:
    """CPU seconds of a live process tree: each process's own time plus what it reaped (exited
    compilers and programs are counted once, in the process that waited for them)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return total
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def baseline(programs: list[Program], gcc: str) -> tuple[float, int]:
    """Sequential subprocess.run: compile, run, compare. Returns (seconds, correct count)."""
    work = Path(tempfile.mkdtemp(prefix="halo-bench-baseline-"))
    correct = 0
    start = time.perf_counter()
    try:
        for p in programs:
            (work / "main.c").write_text(p.source)
            built = subprocess.run([gcc, *GCC_FLAGS, "main.c", "-o", "prog", "-lm"], cwd=work, capture_output=True)
            if built.returncode != 0:
                continue
            try:
                ran = subprocess.run(["./prog"], cwd=work, input=p.stdin.encode(), capture_output=True, timeout=5)
            except subprocess.TimeoutExpired:
                continue
            correct += ran.returncode == 0 and ran.stdout.decode().strip() == p.expected.strip()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return time.perf_counter() - start, correct


def _baseline_part(args: tuple[list[Program], str]) -> tuple[float, int]:
    return baseline(*args)


def ceiling(pool: ProcessPoolExecutor, programs: list[Program], gcc: str, workers: int) -> tuple[float, int]:
    """The machine's parallel ceiling: ``workers`` plain (unsandboxed) loops at once, one per
    process, each over an interleaved share of the programs. Not a baseline a user would write —
    it shows how much parallelism the machine gives right now."""
    start = time.perf_counter()
    parts = [(programs[k::workers], gcc) for k in range(workers)]
    correct = sum(ok for _, ok in pool.map(_baseline_part, parts))
    return time.perf_counter() - start, correct


# ---- ours --------------------------------------------------------------------------------------------


def items_of(programs: list[Program]) -> list[VerifyItem]:
    return [VerifyItem(id=str(i), completion=f"```c\n{p.source}```",
                       context=VerifyContext(stdin=p.stdin, expected_output=p.expected))
            for i, p in enumerate(programs)]


async def ours(client: VerifierClient, programs: list[Program], use_cache: bool) -> tuple[float, int, int]:
    """One verify_batch through the service. Returns (seconds, correct count, cache hits)."""
    items = items_of(programs)
    start = time.perf_counter()
    results = await client.verify_batch(VerifierSpec(name="gcc"), items, use_cache=use_cache, timeout_s=3600)
    elapsed = time.perf_counter() - start
    bad = [r for r in results if r.reward != 1.0]
    if bad:
        print(f"unexpected result: {bad[0].model_dump_json()[:2000]}", file=sys.stderr)
    return elapsed, len(results) - len(bad), sum(r.cached for r in results)


async def wait_healthy(bus: NatsBus, give_up_s: float = 120) -> ServiceHealth:
    deadline = time.monotonic() + give_up_s
    while True:
        try:
            h = await bus.request(subjects.rpc("verifier-sandbox", "health"), HealthRequest(), ServiceHealth, timeout=2)
            if h.status == "ok":
                return h
        except Exception:  # noqa: BLE001 - still starting
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("verifier-sandbox did not become healthy")
        await asyncio.sleep(0.2)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    gcc = shutil.which("gcc")
    if not gcc:
        raise SystemExit("gcc not found: apt-get install gcc")
    home = Path(tempfile.mkdtemp(prefix="halo-bench-verifier-"))
    nats = NatsProcess.start(home / "nats", log_file=home / "nats.log")
    env = dict(os.environ, HALO_HOME=str(home), HALO_NATS_URL=nats.url, HALO_LOG_JSON="false",
               HALO_VERIFIER_SANDBOX_PLUGINS="false")
    if args.workers:
        env["HALO_VERIFIER_SANDBOX_WORKERS"] = str(args.workers)
    log = open(home / "service.log", "wb")  # noqa: SIM115, ASYNC230 - setup, before anything is measured
    service = subprocess.Popen([sys.executable, "-m", "halo_verifier_sandbox"],  # noqa: ASYNC220 - setup
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    bus = await NatsBus.connect(nats.url, name="bench-verifier")
    try:
        await wait_healthy(bus)
        client = VerifierClient(bus)
        inv = await client.inventory()
        # warm-up: both sides, programs not used later
        warm = make_programs(8, 10_000)
        baseline(warm, gcc)
        await ours(client, warm, use_cache=False)

        programs = make_programs(args.n, 1)
        # The machine may be shared: measure in short alternating slices (which side goes first
        # alternates too), so background load that comes and goes hits both sides alike.
        slices = [programs[i:i + args.slice] for i in range(0, len(programs), args.slice)]
        base_s: list[float] = []
        ours_s: list[float] = []
        ceil_s: list[float] = []
        base_cpu = ours_cpu = 0.0
        sides = ["base", "ours", "ceiling"]
        pool = ProcessPoolExecutor(inv.workers)
        list(pool.map(_baseline_part, [(warm[:2], gcc)] * inv.workers))  # start the pool's processes
        for r in range(args.rounds):
            tb = to = tc = 0.0
            for k, part in enumerate(slices):
                rot = (r + k) % len(sides)
                for side in sides[rot:] + sides[:rot]:
                    if side == "base":
                        c0 = children_cpu()
                        t, ok = baseline(part, gcc)
                        base_cpu += children_cpu() - c0
                        assert ok == len(part), f"baseline: only {ok}/{len(part)} correct"
                        tb += t
                    elif side == "ours":
                        c0 = tree_cpu(service.pid)
                        t, ok, _ = await ours(client, part, use_cache=False)
                        ours_cpu += tree_cpu(service.pid) - c0
                        assert ok == len(part), f"verifier: only {ok}/{len(part)} rewarded 1.0"
                        to += t
                    else:
                        t, ok = ceiling(pool, part, gcc, inv.workers)
                        assert ok == len(part), f"ceiling: only {ok}/{len(part)} correct"
                        tc += t
            base_s.append(tb)
            ours_s.append(to)
            ceil_s.append(tc)
            print(f"round {r + 1}/{args.rounds}: baseline {tb:.2f}s, ours {to:.2f}s, unsandboxed parallel "
                  f"ceiling {tc:.2f}s (load average {os.getloadavg()[0]:.2f})", flush=True)
        pool.shutdown()

        # cache: each distinct program 5 times, cold cache (new programs), cache on
        unique = make_programs(max(1, args.n // 5), 50_000)
        dup = [p for p in unique for _ in range(5)]
        random.Random(7).shuffle(dup)
        cache_base, ok_b = baseline(dup, gcc)
        cache_ours, ok_o, hits = await ours(client, dup, use_cache=True)
        assert ok_b == ok_o == len(dup)
    finally:
        await bus.close()
        service.terminate()
        try:
            service.wait(20)
        except subprocess.TimeoutExpired:
            service.kill()
        log.close()
        nats.stop()
        shutil.rmtree(home, ignore_errors=True)

    # Other processes only ever add time, so each side's fastest round is its least disturbed
    # estimate (as timeit does); the median of the per-round ratios is reported alongside.
    b, o = min(base_s), min(ours_s)
    total = args.n * args.rounds
    cpu_b, cpu_o = base_cpu / total, ours_cpu / total
    return {
        "workers": inv.workers,
        "sandbox": inv.sandbox.mechanism,
        "programs": args.n,
        "baseline_s": base_s,
        "ours_s": ours_s,
        "baseline_per_s": args.n / b,
        "ours_per_s": args.n / o,
        "ratio": b / o,
        "ratio_median_of_rounds": statistics.median(x / y for x, y in zip(base_s, ours_s, strict=True)),
        "ceiling_s": ceil_s,
        "ceiling_ratio": b / min(ceil_s),
        "share_of_ceiling": (b / o) / (b / min(ceil_s)),
        # CPU per verification hardly depends on other load: the cost of sandbox + service + bus.
        "cpu_per_verification_s": {"baseline": cpu_b, "ours": cpu_o, "overhead": cpu_o / cpu_b},
        "projected_ratio_idle": min(inv.workers, os.cpu_count() or 1) * cpu_b / cpu_o,
        "cache": {"completions": len(dup), "distinct": len(unique), "cache_hits": hits,
                  "baseline_s": cache_base, "ours_s": cache_ours,
                  "baseline_per_s": len(dup) / cache_base, "ours_per_s": len(dup) / cache_ours,
                  "ratio": cache_base / cache_ours},
    }


def print_table(res: dict[str, Any]) -> None:
    c = res["cache"]
    rows = [
        ("gcc compile+run, distinct programs (cache off)", res["baseline_per_s"], res["ours_per_s"], res["ratio"]),
        (f"same, each program x5 (cache on, {c['cache_hits']} hits)", c["baseline_per_s"], c["ours_per_s"], c["ratio"]),
    ]
    print()
    print(f"verifier-sandbox ({res['sandbox']}, {res['workers']} workers, {os.cpu_count()} CPUs) vs sequential "
          f"subprocess.run, {res['programs']} programs")
    print(f"{'measurement':52s} {'baseline/s':>11s} {'ours/s':>9s} {'ratio':>7s}  target")
    for i, (name, b, o, r) in enumerate(rows):
        verdict = ("PASS" if r >= TARGET else "MISS") if i == 0 else "-"
        print(f"{name:52s} {b:11.1f} {o:9.1f} {r:6.2f}x  {f'>= {TARGET:.1f}x {verdict}' if i == 0 else ''}")
    print(f"(fastest round of each side; median of the per-round ratios: {res['ratio_median_of_rounds']:.2f}x)")
    print(f"machine's parallel ceiling now ({res['workers']} plain loops at once, no sandbox): "
          f"{res['ceiling_ratio']:.2f}x; the service reaches {res['share_of_ceiling']:.0%} of it")
    cpu = res["cpu_per_verification_s"]
    print(f"CPU per verification: baseline {cpu['baseline'] * 1000:.1f} ms, ours {cpu['ours'] * 1000:.1f} ms "
          f"(sandbox + service + bus overhead {cpu['overhead'] - 1:+.0%}); projected ratio on an idle machine "
          f"with {res['workers']} workers: {res['projected_ratio_idle']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 programs, 2 rounds")
    parser.add_argument("-n", type=int, default=None, help="programs per round (default 200)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 4; >= 2 so both sides go first)")
    parser.add_argument("--workers", type=int, default=0, help="service workers (default: CPU count)")
    parser.add_argument("--slice", type=int, default=25, help="programs per alternating slice (default 25)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results")
    args = parser.parse_args(argv)
    args.n = args.n or (40 if args.quick else 200)
    args.rounds = args.rounds or (2 if args.quick else 4)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2")
    res = asyncio.run(run(args))
    print_table(res)
    out = {
        "benchmark": "verifier",
        "baseline": "sequential subprocess.run(gcc) + subprocess.run(./prog), no sandbox",
        "target_ratio": TARGET,
        "config": {"programs": args.n, "rounds": args.rounds, "slice": args.slice, "quick": args.quick,
                   "gcc_flags": GCC_FLAGS},
        "environment": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                        "load_average_after": os.getloadavg(),
                        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        **res,
        "pass": res["ratio"] >= TARGET,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
