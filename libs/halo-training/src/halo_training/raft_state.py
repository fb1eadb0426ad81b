"""RAFT bookkeeping: the per-cycle stage state machine on disk, its JSONL stage outputs, and sample selection.

::

    runs/<run_id>/
      raft_state.json                 stages done per cycle (+ their stats), attempts; written atomically
      raft_prompt_stats.json          per-prompt success rates (seeds a later run's 'historical' curriculum)
      cycles/<k>/samples.jsonl        generate: one line per prompt with its N completions (appended per chunk)
      cycles/<k>/verified.jsonl       verify: one line per completion with its rewards (appended per chunk)
      cycles/<k>/selected.jsonl       select: the kept samples (written atomically)
      cycles/<k>/adapter/ | model/    train: the cycle's policy (renamed into place when complete)
      checkpoints/checkpoint-<step>/  checkpoint: a marker (trainer_state.json + raft_checkpoint.json)

A stage is done when ``raft_state.json`` says so, and its output is then complete: a resumed run continues
at the first stage not done, and inside generate/verify at the first prompt without a complete line (a torn
last line of a killed attempt is dropped), so nothing finished is generated or verified twice.

:func:`select_samples` is the rejection step, a pure function: a sample is training-eligible when a verifier
could check it, it succeeded (``require_success``), it was not a compile-only success (unless
``allow_compile_only``), its total reward reaches the threshold and it is not a duplicate; the top fraction
of the eligible ones by reward is kept. Every rejected sample is counted under its first failing reason.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halo_common.files import write_json_atomic, write_jsonl_atomic

from halo_training.curriculum import CycleHistory, PromptOutcome
from halo_training.rundir import RunDir
from halo_training.shaping import CycleOutcome

STAGES = ("generate", "verify", "select", "train", "checkpoint")

#: Rejection reasons, in the order they are checked.
REASONS = ("empty", "verifier_error", "not_success", "compile_only", "below_threshold", "duplicate",
           "per_prompt_cap", "below_top_fraction")


# ---- selection ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifiedSample:
    """One verified completion of a cycle."""

    prompt_index: int
    sample: int
    text: str
    total: float | None
    success: bool
    compile_only: bool = False
    error: str | None = None
    rewards: dict[str, float | None] = field(default_factory=dict)
    finish_reason: str = "stop"

    def to_json(self) -> dict[str, Any]:
        return {"prompt_index": self.prompt_index, "sample": self.sample, "text": self.text, "total": self.total,
                "success": self.success, "compile_only": self.compile_only, "error": self.error,
                "rewards": self.rewards, "finish_reason": self.finish_reason}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VerifiedSample:
        return cls(int(d["prompt_index"]), int(d["sample"]), str(d["text"]), d.get("total"), bool(d["success"]),
                   bool(d.get("compile_only", False)), d.get("error"), dict(d.get("rewards") or {}),
                   str(d.get("finish_reason", "stop")))


@dataclass
class Selection:
    """The outcome of :func:`select_samples`."""

    kept: list[VerifiedSample]
    eligible: int
    rejected: Counter[str]

    @property
    def why_empty(self) -> str:
        """One line naming the rejection reasons, most frequent first (for a cycle that keeps nothing)."""
        parts = [f"{r} {n}" for r, n in self.rejected.most_common()]
        return "no sample passed selection: " + (", ".join(parts) if parts else "no samples")


def select_samples(samples: Sequence[VerifiedSample], *, threshold: float, keep_fraction: float,
                   require_success: bool = True, allow_compile_only: bool = False, dedupe: bool = True,
                   max_per_prompt: int | None = None) -> Selection:
    """Keep the training-eligible samples, then the top ``keep_fraction`` of them by reward (at least one)."""
    rejected: Counter[str] = Counter()
    eligible: list[VerifiedSample] = []
    seen: set[tuple[int, str]] = set()
    for s in samples:
        if not s.text.strip():
            rejected["empty"] += 1
        elif s.total is None:
            rejected["verifier_error"] += 1
        elif require_success and not s.success:
            rejected["not_success"] += 1
        elif s.compile_only and not allow_compile_only:
            rejected["compile_only"] += 1
        elif s.total < threshold - 1e-12:
            rejected["below_threshold"] += 1
        elif dedupe and (s.prompt_index, s.text.strip()) in seen:
            rejected["duplicate"] += 1
        else:
            seen.add((s.prompt_index, s.text.strip()))
            eligible.append(s)
    ranked = sorted(eligible, key=lambda s: (-(s.total or 0.0), s.prompt_index, s.sample))
    if max_per_prompt is not None:
        per: Counter[int] = Counter()
        capped = []
        for s in ranked:
            per[s.prompt_index] += 1
            if per[s.prompt_index] > max_per_prompt:
                rejected["per_prompt_cap"] += 1
            else:
                capped.append(s)
        ranked = capped
    n_keep = math.ceil(keep_fraction * len(ranked) - 1e-9) if ranked else 0
    n_keep = max(1, n_keep) if ranked else 0
    if len(ranked) > n_keep:
        rejected["below_top_fraction"] += len(ranked) - n_keep
    return Selection(ranked[:n_keep], len(eligible), rejected)


# ---- stage files --------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete, decodable lines (a torn last line of a killed writer is skipped)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def repair_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rewrite ``path`` with its complete lines only (dropping a torn tail) and return them."""
    rows = read_jsonl(path)
    if path.exists():
        write_jsonl_atomic(path, rows)
    return rows


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows and fsync, so a chunk is either on disk completely or (torn) dropped on resume."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---- the state file -----------------------------------------------------------------------------
class RaftState:
    """``raft_state.json``: which stages of which cycles are done, with their stats. Every change is written
    atomically before the next stage starts."""

    def __init__(self, run: RunDir, data: dict[str, Any] | None = None) -> None:
        self.run = run
        self.data = data or {"version": 1, "attempts": 0, "cycles": {}}

    @property
    def path(self) -> Path:
        return self.run.root / "raft_state.json"

    @classmethod
    def load(cls, run: RunDir) -> RaftState:
        data = run.read_json("raft_state.json")
        return cls(run, data if isinstance(data, dict) and "cycles" in data else None)

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    def start_attempt(self) -> int:
        self.data["attempts"] = int(self.data.get("attempts", 0)) + 1
        self.save()
        return self.data["attempts"]

    @property
    def attempt(self) -> int:
        return int(self.data.get("attempts", 0))

    def cycle(self, k: int) -> dict[str, Any]:
        return self.data["cycles"].setdefault(str(k), {"stages": {}})

    def stage(self, k: int, name: str) -> dict[str, Any] | None:
        return self.data["cycles"].get(str(k), {}).get("stages", {}).get(name)

    def done(self, k: int, name: str) -> bool:
        return self.stage(k, name) is not None

    def cycle_done(self, k: int) -> bool:
        return self.done(k, "checkpoint")

    def mark(self, k: int, name: str, **stats: Any) -> None:
        self.cycle(k)["stages"][name] = {"attempt": self.attempt, **stats}
        self.save()

    def cycles_done(self) -> list[int]:
        return sorted(int(k) for k, c in self.data["cycles"].items() if "checkpoint" in c.get("stages", {}))

    def policy_before(self, k: int) -> str | None:
        """Run-relative directory of the policy that cycle ``k`` starts from (None: the base model)."""
        for j in range(k - 1, 0, -1):
            t = self.stage(j, "train")
            if t and t.get("policy"):
                return str(t["policy"])
        return None

    def step_before(self, k: int) -> int:
        """Optimizer steps of all cycles before ``k``."""
        for j in range(k - 1, 0, -1):
            c = self.stage(j, "checkpoint")
            if c is not None:
                return int(c.get("step", 0))
        return 0

    def tokens_before(self, k: int) -> int:
        total = 0
        for j in range(1, k):
            t = self.stage(j, "train")
            if t:
                total += int(t.get("tokens", 0))
        return total

    def history(self, before: int) -> tuple[CycleHistory, list[CycleOutcome]]:
        """Outcomes of the finished cycles before ``before`` for curricula and shaping."""
        hist = CycleHistory()
        outcomes: list[CycleOutcome] = []
        for j in range(1, before):
            v, s = self.stage(j, "verify"), self.stage(j, "select")
            if v is None or s is None:
                continue
            hist.pass_rates.append(float(v.get("pass_rate", 0.0)))
            hist.outcomes.append({int(i): PromptOutcome(int(n), int(ok)) for i, (n, ok) in
                                  (v.get("per_prompt") or {}).items()})
            outcomes.append(CycleOutcome(float(v.get("pass_rate", 0.0)), int(s.get("kept", 0))))
        return hist, outcomes


def verify_stats(samples: list[VerifiedSample], labels: list[str]) -> dict[str, Any]:
    """Reward statistics of a cycle's verified samples, and per-prompt [samples, successes]."""
    def mean_std(xs: list[float]) -> tuple[float, float]:
        m = sum(xs) / len(xs)
        return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0

    out: dict[str, Any] = {"verified": len(samples)}
    totals = [s.total for s in samples if s.total is not None]
    if totals:
        out["reward_mean"], out["reward_std"] = mean_std(totals)
    for lab in labels:
        xs = [s.rewards.get(lab) for s in samples]
        vals = [float(x) for x in xs if x is not None]
        if vals:
            out[f"reward_{lab}_mean"], out[f"reward_{lab}_std"] = mean_std(vals)
    if samples:
        out["pass_rate"] = sum(s.success for s in samples) / len(samples)
        out["verifier_error_ratio"] = sum(s.total is None for s in samples) / len(samples)
    per: dict[str, list[int]] = {}
    for s in samples:
        acc = per.setdefault(str(s.prompt_index), [0, 0])
        acc[0] += 1
        acc[1] += int(s.success)
    out["per_prompt"] = per
    return out
