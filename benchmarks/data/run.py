"""Fuzzy dedup throughput: halo-data's streaming MinHash/LSH dedup vs a plain single-process datasketch loop.

    python benchmarks/data/run.py                      # 200k synthetic documents, both, side by side
    python benchmarks/data/run.py --docs 20000         # a quicker run

The corpus: random-word documents (60-140 words from a 30k vocabulary) where one in ten repeats an earlier
document with one word replaced (Jaccard ~0.9). Both sides shingle the same way (word 5-grams, lowercased), use 128
permutations and threshold 0.85. The baseline is written the way datasketch's documentation shows it: one
``MinHash`` per document fed shingle by shingle with ``update``, then ``lsh.query`` and ``lsh.insert`` into a
``MinHashLSH``. Each side runs in its own process; peak memory is the largest resident set of its process tree
(sampled every 50 ms with psutil: the workers of our side count too). Prints docs/s of both and the ratio and
writes benchmarks/results/data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


def make_corpus(path: Path, n: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(30000)]
    docs: list[str] = []
    dups = 0
    with path.open("w") as f:
        for i in range(n):
            if docs and i % 10 == 9:
                words = rng.choice(docs[-1000:]).split()
                for pos in rng.sample(range(len(words)), 1):
                    words[pos] = rng.choice(vocab)
                text = " ".join(words)
                dups += 1
            else:
                text = " ".join(rng.choices(vocab, k=rng.randint(60, 140)))
                docs.append(text)
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    return dups


def side_ours(path: str, workers: int) -> dict:
    from halo_data.core.dedup import DedupConfig, dedup

    t = time.perf_counter()
    r = dedup(path, path + ".ours.jsonl", DedupConfig(method="fuzzy", threshold=0.85, num_perm=128, shingle_size=5,
                                                     workers=workers))
    return {"seconds": time.perf_counter() - t, "rows_in": r.rows_in, "kept": r.rows_out, "workers": workers}


def side_baseline(path: str) -> dict:
    import re

    from datasketch import MinHash, MinHashLSH

    word = re.compile(r"\w+")
    t = time.perf_counter()
    lsh = MinHashLSH(threshold=0.85, num_perm=128)
    kept = rows = 0
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            toks = word.findall(rec["text"].lower())
            m = MinHash(num_perm=128)
            for i in range(max(1, len(toks) - 4)):
                m.update(" ".join(toks[i:i + 5]).encode("utf8"))
            rows += 1
            if not lsh.query(m):
                lsh.insert(str(rows), m)
                kept += 1
    return {"seconds": time.perf_counter() - t, "rows_in": rows, "kept": kept, "workers": 1}


def measure(argv: list[str]) -> dict:
    """Run one side in a subprocess; sample the RSS of its process tree."""
    proc = subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True)
    peak = [0]
    root = psutil.Process(proc.pid)

    def sample() -> None:
        while proc.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    th.join()
    if proc.returncode:
        raise SystemExit(f"{argv[0]} side failed ({proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = round(peak[0] / 2**20, 1)
    result["docs_per_s"] = round(result["rows_in"] / result["seconds"], 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--side", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side == "ours":
        print(json.dumps(side_ours(args.input, args.workers)))
        return
    if args.side == "baseline":
        print(json.dumps(side_baseline(args.input)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        dups = make_corpus(corpus, args.docs)
        print(f"{args.docs} documents ({corpus.stat().st_size / 2**20:.0f} MB), {dups} planted near-duplicates; "
              f"{os.cpu_count()} cores")
        ours = measure(["--side", "ours", "--input", str(corpus), "--workers", str(args.workers)])
        print(f"ours:     {ours['docs_per_s']:>9.0f} docs/s  {ours['seconds']:7.1f} s  peak {ours['peak_rss_mb']} MB  "
              f"kept {ours['kept']}  ({ours['workers']} workers)")
        base = measure(["--side", "baseline", "--input", str(corpus)])
        print(f"baseline: {base['docs_per_s']:>9.0f} docs/s  {base['seconds']:7.1f} s  peak {base['peak_rss_mb']} MB  "
              f"kept {base['kept']}  (datasketch loop, 1 process)")
    ratio = ours["docs_per_s"] / base["docs_per_s"]
    print(f"ratio: {ratio:.2f}x (target >= 1.5x)")
    out = ROOT / "benchmarks" / "results" / "data.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"docs": args.docs, "planted_duplicates": dups, "cores": os.cpu_count(), "ours": ours,
                               "baseline": base, "ratio": round(ratio, 2), "target": 1.5}, indent=2) + "\n")


if __name__ == "__main__":
    main()
