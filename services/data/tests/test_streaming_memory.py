"""Streaming: fuzzy dedup of a file larger than a stated memory cap finishes under that cap.

The dedup runs in a fresh process (one worker, so the whole job is that process) and reports its own peak
resident set size (``VmHWM``); the input file is written larger than the cap first. Tokens are long
(32 hex characters) so the file is big while the test stays quick: the work is per word, memory is per byte.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

CAP_MB = 80
FILE_MB = 96

CHILD = """
import json, resource, sys
from halo_data.core.dedup import DedupConfig, dedup
r = dedup(sys.argv[1], sys.argv[2], DedupConfig(method="fuzzy", workers=1, num_perm=64))
# VmHWM: this process's own peak (ru_maxrss would include the pytest process it was forked from on Linux).
try:
    peak_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
except OSError:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        peak_kb //= 1024  # bytes there
print(json.dumps({"peak_mb": peak_kb / 1024, "rows_in": r.rows_in, "rows_out": r.rows_out}))
"""


def write_big(path: Path, mb: int) -> tuple[int, int]:
    rng = random.Random(11)
    vocab = [f"{rng.getrandbits(128):032x}" for _ in range(20000)]
    size = rows = dups = 0
    prev: str | None = None
    with path.open("w") as f:
        while size < mb << 20:
            if prev is not None and rows % 10 == 9:  # every tenth row repeats the previous one, lightly edited
                words = prev.split()
                words[5] = vocab[rng.randrange(len(vocab))]
                text = " ".join(words)
                dups += 1
            else:
                text = " ".join(rng.choices(vocab, k=rng.randint(400, 1600)))
            line = json.dumps({"id": rows, "text": text}) + "\n"
            f.write(line)
            size += len(line)
            rows += 1
            prev = text
    return rows, dups


def test_fuzzy_dedup_of_a_file_larger_than_the_memory_cap(tmp_path: Path) -> None:
    src = tmp_path / "big.jsonl"
    rows, dups = write_big(src, FILE_MB)
    size_mb = src.stat().st_size / 2**20
    assert size_mb > CAP_MB
    out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(tmp_path / "out.jsonl")], capture_output=True,
                         text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nfuzzy dedup of {size_mb:.0f} MB ({rows} rows): peak RSS {report['peak_mb']:.0f} MB (cap {CAP_MB} MB)")
    assert report["rows_in"] == rows
    assert report["rows_out"] == rows - dups
    assert report["peak_mb"] < CAP_MB
