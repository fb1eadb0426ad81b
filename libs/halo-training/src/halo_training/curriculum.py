"""RAFT curricula: which prompts a cycle samples, as pure functions of the prompts and the run's history.

Everything a strategy needs is passed in — each prompt's difficulty and the per-prompt / per-cycle outcomes
of earlier cycles (persisted in ``raft_state.json``) — so a resumed run picks exactly the prompts an
uninterrupted one would::

    items = [PromptItem(p.index, difficulty(p.complexity, p.text)) for p in prompts]
    choice = select_prompts(spec.curriculum, items, cycle=2, total_cycles=5, history=state.history())
    choice.indices, choice.ordered, choice.info

Difficulty is a record's ``complexity`` field when it has one, else its prompt length in characters; only the
order matters (strategies work on ranks). Strategies:

* ``none``: every prompt, in file order;
* ``complexity``: every prompt, easiest first, and the cycle trains in that order (``ordered``);
* ``progressive``: the easiest ``start + (cycle-1) * increment`` fraction (increment defaults to reaching all
  prompts in the last cycle);
* ``adaptive``: a window of ``adaptive_window`` of the prompts centred on a difficulty level (0 easiest, 1
  hardest) that starts at ``adaptive_start`` and moves by ``adaptive_step`` after each cycle: up when that
  cycle's pass rate exceeded ``adaptive_raise_above``, down when it was below ``adaptive_lower_below``;
* ``historical``: prompts ordered by their success rate so far (this run's earlier cycles, seeded by
  ``historical_stats`` from an earlier run; never seen = ``historical_prior``), most successful first;
  with ``skip_mastered``, prompts whose every sample succeeded the last time they ran are left out (they teach
  nothing new) unless that would leave no prompt.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halo_schemas.rl import CurriculumSpec


@dataclass(frozen=True)
class PromptItem:
    """A prompt as curricula see it: its index in the data and its difficulty (higher = harder)."""

    index: int
    difficulty: float
    key: str = ""  # prompt text, for historical stats across runs


@dataclass(frozen=True)
class PromptOutcome:
    """How one prompt fared in one cycle: samples verified and how many succeeded."""

    samples: int
    successes: int

    @property
    def rate(self) -> float:
        return self.successes / self.samples if self.samples else 0.0


@dataclass
class CycleHistory:
    """What earlier cycles did: per cycle, the pass rate and each prompt's outcome."""

    pass_rates: list[float] = field(default_factory=list)  # cycle 1, 2, ... (completed cycles)
    outcomes: list[dict[int, PromptOutcome]] = field(default_factory=list)  # same order


@dataclass
class CurriculumChoice:
    """The prompts of a cycle (data indices, in training order) and what decided them."""

    indices: list[int]
    ordered: bool
    info: dict[str, Any] = field(default_factory=dict)


def difficulty(complexity: float | None, text: str) -> float:
    """A record's explicit ``complexity``, else the prompt length in characters."""
    return float(complexity) if complexity is not None else float(len(text))


def by_difficulty(items: Sequence[PromptItem]) -> list[PromptItem]:
    """Easiest first; ties keep data order (stable)."""
    return sorted(items, key=lambda it: (it.difficulty, it.index))


def progressive_fraction(cycle: int, total_cycles: int, start: float, increment: float | None) -> float:
    """Fraction of the (easiest-first) prompts used in ``cycle`` (1-based)."""
    if increment is None:
        increment = (1.0 - start) / (total_cycles - 1) if total_cycles > 1 else 1.0
    return min(1.0, start + (cycle - 1) * increment)


def adaptive_level(pass_rates: Sequence[float], spec: CurriculumSpec) -> float:
    """Difficulty level of the next cycle, replayed from the pass rates of the cycles so far."""
    level = spec.adaptive_start
    for rate in pass_rates:
        if rate > spec.adaptive_raise_above:
            level = min(1.0, level + spec.adaptive_step)
        elif rate < spec.adaptive_lower_below:
            level = max(0.0, level - spec.adaptive_step)
    return level


def adaptive_window(ranked: Sequence[PromptItem], level: float, window: float) -> list[PromptItem]:
    """``window`` of the ranked prompts whose centre sits at ``level`` (clamped to the ends)."""
    n = len(ranked)
    k = max(1, min(n, math.ceil(window * n)))
    centre = level * (n - 1)
    start = int(round(centre - (k - 1) / 2))
    start = max(0, min(n - k, start))
    return list(ranked[start:start + k])


def load_historical_stats(source: str | None) -> dict[str, float]:
    """{prompt text: success rate} from a JSON file or an earlier RAFT run directory ({} when absent)."""
    if not source:
        return {}
    p = Path(source).expanduser()
    if p.is_dir():
        p = p / "raft_prompt_stats.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    stats = data.get("prompts", data) if isinstance(data, dict) else {}
    return {str(k): float(v) for k, v in stats.items() if isinstance(v, (int, float))}


def historical_rates(items: Sequence[PromptItem], history: CycleHistory, prior: Mapping[str, float],
                     default: float) -> dict[int, float]:
    """Success rate per prompt: pooled over this run's cycles, else the earlier run's, else ``default``."""
    rates: dict[int, float] = {}
    for it in items:
        samples = successes = 0
        for cyc in history.outcomes:
            o = cyc.get(it.index)
            if o is not None:
                samples += o.samples
                successes += o.successes
        if samples:
            rates[it.index] = successes / samples
        elif it.key in prior:
            rates[it.index] = prior[it.key]
        else:
            rates[it.index] = default
    return rates


def last_outcome(index: int, history: CycleHistory) -> PromptOutcome | None:
    for cyc in reversed(history.outcomes):
        if index in cyc:
            return cyc[index]
    return None


def select_prompts(spec: CurriculumSpec, items: Sequence[PromptItem], *, cycle: int, total_cycles: int,
                   history: CycleHistory | None = None, prior: Mapping[str, float] | None = None) -> CurriculumChoice:
    """The prompts of ``cycle`` (1-based) under ``spec.strategy``; see the module docstring."""
    history = history or CycleHistory()
    items = list(items)
    if not items:
        return CurriculumChoice([], False, {"strategy": spec.strategy})
    strategy = spec.strategy
    if strategy == "none":
        return CurriculumChoice([it.index for it in items], False, {"strategy": strategy})
    ranked = by_difficulty(items)
    if strategy == "complexity":
        return CurriculumChoice([it.index for it in ranked], True, {"strategy": strategy})
    if strategy == "progressive":
        frac = progressive_fraction(cycle, total_cycles, spec.progressive_start, spec.progressive_increment)
        n = max(1, math.ceil(frac * len(ranked) - 1e-9))
        return CurriculumChoice([it.index for it in ranked[:n]], True, {"strategy": strategy, "fraction": frac})
    if strategy == "adaptive":
        level = adaptive_level(history.pass_rates[: max(0, cycle - 1)], spec)
        chosen = adaptive_window(ranked, level, spec.adaptive_window)
        return CurriculumChoice([it.index for it in chosen], True, {"strategy": strategy, "level": level})
    if strategy == "historical":
        rates = historical_rates(items, history, prior or {}, spec.historical_prior)
        order = sorted(items, key=lambda it: (-rates[it.index], it.index))
        skipped = []
        if spec.skip_mastered:
            keep = []
            for it in order:
                o = last_outcome(it.index, history)
                if o is not None and o.samples and o.successes == o.samples:
                    skipped.append(it.index)
                else:
                    keep.append(it)
            order = keep or order  # everything mastered: keep practising rather than stop
            if not keep:
                skipped = []
        return CurriculumChoice([it.index for it in order], True,
                                {"strategy": strategy, "skipped_mastered": len(skipped)})
    raise ValueError(f"unknown curriculum strategy {strategy!r}")
