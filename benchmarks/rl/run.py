"""RL benchmarks: runs every part that exists, side by side with its baseline.

* ``rollout.py`` (a): rollout samples/s, our batched transformers backend vs a per-prompt
  ``model.generate`` loop (target >= 3x) -> ``benchmarks/results/rl_rollout.json``;
* ``grpo.py`` (b): GRPO step time (added with the GRPO recipe) -> ``benchmarks/results/rl_grpo.json``.

Usage::

    python benchmarks/rl/run.py             # every part, full size
    python benchmarks/rl/run.py --quick     # every part, smoke size (passes --quick on)
    just bench rl

Each part runs in its own process (so one part's memory and threads never skew another's) with
the arguments given here; the parts' JSON results are merged into ``benchmarks/results/rl.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[1] / "benchmarks" / "results"
PARTS = ("rollout", "grpo")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    merged: dict[str, object] = {"benchmark": "rl", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "parts": {}}
    failed = []
    for part in PARTS:
        script = HERE / f"{part}.py"
        if not script.exists():
            print(f"[rl] {part}: not present yet, skipped")
            continue
        print(f"[rl] {part}: python {script.relative_to(HERE.parents[1])} {' '.join(args)}", flush=True)
        rc = subprocess.run([sys.executable, str(script), *args]).returncode
        result = RESULTS / f"rl_{part}.json"
        if rc != 0:
            failed.append(part)
        elif result.exists():
            merged["parts"][part] = json.loads(result.read_text())  # type: ignore[index]
    (RESULTS / "rl.json").write_text(json.dumps(merged, indent=2) + "\n")
    print(f"[rl] merged results: {RESULTS / 'rl.json'}")
    if failed:
        print(f"[rl] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
