"""Coordinator overhead per sweep trial vs the trial's own duration, on a real stack and the tiny model.

Usage::

    python benchmarks/sweep/run.py                    # 3 trials of ~30 s each (about 2-3 min on 2 cores)
    python benchmarks/sweep/run.py --steps 60 --trials 3    # quick (short trials: the ratio is then much higher)

A private nats-server, the gateway, the registry, trainer-torch and sweeps run as processes (as ``halo-forge up``
runs them). One random-sampler sweep of ``--trials`` sequential SFT trials runs to its end. Per trial:

* **submit -> running**: from the coordinator's ``t_submitted`` (Optuna trial attribute, written right after the
  job was queued) to the first time the job's status reads ``running`` (polled every 20 ms): queue pickup;
* **finished -> next submitted**: from the trial's ``finished`` run event (its timestamp, set by the trainer) to
  the next trial's ``t_submitted``: event delivery, Optuna's tell, the next ask and the submit;
* **trial duration**: running -> finished.

The finished -> next submitted gap is split by the coordinator's own timestamps (Optuna trial attributes):
event -> told (the finished event reaching the coordinator, ``t_finished_seen``), told -> next asked (Optuna's tell
and the next ask, ``t_ask``), asked -> submitted (the trial's spec, its ids recorded, its job queued). Submit ->
running is split at the trainer's ``started`` event: queue pickup by trainer-torch (its job consumer, its
admission) vs the job's set-up before it reads ``running``.

Printed: each part, and overhead / trial duration as a ratio (target: under 5 % for a 30 s trial). Results go
to ``benchmarks/results/sweep.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from halo_sweeps.core.study import open_storage
from halo_testing.stack import ProcessStack

CHAT = [{"messages": [{"role": "user", "content": f"What does a {a} say?"},
                      {"role": "assistant", "content": f"A {a} says {s}."}]}
        for a, s in [("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("owl", "hoot")]]


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def event_ts(url: str, run_id: str) -> dict[str, float]:
    """The trainer's timestamp of the run's first event of each type (started, finished...)."""
    out: dict[str, float] = {}
    with httpx.stream("GET", f"{url}/api/v1/runs/{run_id}/events", params={"follow": "false"}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                out.setdefault(event["type"], _ts(event["message"]["ts"]))
    if "finished" not in out:
        raise RuntimeError(f"run {run_id} has no finished event")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=900, help="Optimizer steps per trial (~30 ms each on 2 cores).")
    ap.add_argument("--trials", type=int, default=3, help="Sequential trials.")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="halo-sweep-bench-"))
    (root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHAT))
    stack = ProcessStack(root, ["halo_gateway", "halo_registry", "halo_trainer_torch", "halo_sweeps"],
                         ready={"trainer-torch", "registry", "sweeps"},
                         env={"HALO_TRAINER_TORCH_STATUS_INTERVAL_S": "0.5"})
    try:
        spec = {"method": "sft", "sampler": "random", "n_trials": args.trials,
                "base": {"model": "tiny://llama", "data": {"train": str(root / "chat.jsonl")}, "max_steps": args.steps,
                         "batch_size": 2, "max_length": 64, "checkpoint_every_steps": 100000, "log_every_steps": 10},
                "search_space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}
        started = httpx.post(f"{stack.url}/api/v1/sweeps", json=spec, timeout=60).json()
        sweep_id = started["sweep_id"]
        running_seen: dict[str, float] = {}
        last_check = 0.0
        while True:
            # The trials' job states (cheap KV reads) every 20 ms; the sweep itself once a second.
            for job in httpx.get(f"{stack.url}/api/v1/jobs", params={"job_type": "sft"}, timeout=60).json()["jobs"]:
                if job["state"] != "queued" and job["job_id"] not in running_seen:
                    running_seen[job["job_id"]] = time.time()
            if time.monotonic() - last_check > 1.0:
                last_check = time.monotonic()
                info = httpx.get(f"{stack.url}/api/v1/sweeps/{sweep_id}", timeout=60).json()
                if info["state"] in ("succeeded", "failed", "cancelled"):
                    break
            time.sleep(0.02)
        assert info["state"] == "succeeded", info
        storage = open_storage(None, stack.home)
        frozen = sorted(storage.get_all_trials(storage.get_study_id_from_name(sweep_id)), key=lambda t: t.number)
        rows: list[dict[str, Any]] = []
        for i, t in enumerate(frozen):
            job_id, run_id = t.user_attrs["job_id"], t.user_attrs["run_id"]
            events = event_ts(stack.url, run_id)
            done, submitted = events["finished"], t.user_attrs["t_submitted"]
            row = {"trial": t.number, "submit_to_running_s": running_seen[job_id] - submitted,
                   "submit_to_started_event_s": events.get("started", submitted) - submitted,
                   "trial_s": done - running_seen[job_id]}
            if i + 1 < len(frozen):
                nxt = frozen[i + 1].user_attrs
                row["finished_to_next_submitted_s"] = nxt["t_submitted"] - done
                row["finished_to_told_s"] = t.user_attrs["t_finished_seen"] - done
                row["told_to_next_asked_s"] = nxt["t_ask"] - t.user_attrs["t_finished_seen"]
                row["asked_to_submitted_s"] = nxt["t_submitted"] - nxt["t_ask"]
            rows.append(row)
    finally:
        stack.close()
    pickup = statistics.mean(r["submit_to_running_s"] for r in rows)
    gaps = [r["finished_to_next_submitted_s"] for r in rows if "finished_to_next_submitted_s" in r]
    gap = statistics.mean(gaps) if gaps else 0.0
    trial = statistics.mean(r["trial_s"] for r in rows)
    ratio = (pickup + gap) / trial
    for r in rows:
        gap_parts = ""
        if "finished_to_next_submitted_s" in r:
            gap_parts = (f" (event->told {r['finished_to_told_s'] * 1000:.0f}, told->next asked "
                         f"{r['told_to_next_asked_s'] * 1000:.0f}, asked->submitted {r['asked_to_submitted_s'] * 1000:.0f})")
        print(f"trial {r['trial']}: submit->running {r['submit_to_running_s'] * 1000:7.0f} ms (trainer's started "
              f"event at {r['submit_to_started_event_s'] * 1000:.0f} ms)   trial {r['trial_s']:6.1f} s   finished->next "
              "submitted " + (f"{r['finished_to_next_submitted_s'] * 1000:7.0f} ms" + gap_parts
                              if "finished_to_next_submitted_s" in r else "-"))
    print(f"coordinator overhead per trial: {(pickup + gap) * 1000:.0f} ms (submit->running {pickup * 1000:.0f} ms + "
          f"finished->next submitted {gap * 1000:.0f} ms) vs trial {trial:.1f} s")
    print(f"ratio overhead / trial = {ratio:.4f} ({ratio * 100:.2f} %; target < 5 % for a 30 s trial)")
    out = Path(__file__).resolve().parents[1] / "results" / "sweep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"steps": args.steps, "trials": rows, "overhead_s": pickup + gap, "trial_s": trial,
                               "ratio": ratio, "argv": sys.argv[1:]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
