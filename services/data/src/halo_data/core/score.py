"""Quality scoring: heuristic signals that are fair to code and math as well as prose, a weighted composite,
and an optional model-based score (a judge or reward-model verifier).

Signals, each in [0, 1] (1 = fine):

* ``length`` — words within ``[min_words, max_words]``; shorter/longer decays proportionally;
* ``repetition`` — the larger of the duplicated-line fraction (lines with at least two words only, so closing
  braces and blank lines of code do not count) and the duplicated word-5-gram fraction; 1 up to 30 %, 0 at 80 %;
* ``symbols`` — punctuation/symbol and whitespace balance. Code and LaTeX run 20–40 % symbols, so up to 45 %
  scores 1 (0 at 80 %); whitespace up to 50 % scores 1 (indentation), 0 at 90 %;
* ``format`` — the record is complete for its format (non-empty prompt and completion, a chat that ends with a
  non-empty assistant turn, balanced code fences);
* ``encoding`` — replacement characters, control characters and mojibake (``Ã©``, ``â€™``) per character;
* ``judge`` — optional: the reward of a verifier (``llm_judge``, ``reward_model``…) on the row.

A row is rejected when a signal (or ``composite``) is below its minimum; the rejection names the signal.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from halo_common.records import RecordWriter, detect_format, flatten_messages

from halo_data.core.common import Cancelled, DataError, Progress, ProgressFn, StepResult, StopFn, ignore, never, texts
from halo_data.core.ngrams import tokens

SIGNALS = ("length", "repetition", "symbols", "format", "encoding")
DEFAULT_WEIGHTS = {"length": 1.0, "repetition": 1.0, "symbols": 1.0, "format": 1.0, "encoding": 1.0, "judge": 2.0}
DEFAULT_MINIMUMS = {"length": 0.5, "repetition": 0.5, "symbols": 0.5, "format": 1.0, "encoding": 0.8}
_MOJIBAKE = re.compile(r"Ã[\u0080-\u00bf]|â€|Â[\u00a0-\u00bf]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: Judge: (records with their text) -> one score in [0, 1] per record (or None for no score).
JudgeFn = Callable[[list[tuple[dict[str, Any], str]]], list[float | None]]


def _ramp(value: float, ok: float, zero: float) -> float:
    """1 up to ``ok``, linearly down to 0 at ``zero``."""
    if value <= ok:
        return 1.0
    return max(0.0, 1.0 - (value - ok) / (zero - ok))


def length_score(n_words: int, min_words: int, max_words: int) -> float:
    if n_words < min_words:
        return n_words / min_words if min_words else 1.0
    if n_words > max_words:
        return max_words / n_words
    return 1.0


def repetition_score(text: str) -> float:
    lines = [ln.strip() for ln in text.splitlines() if len(ln.split()) >= 2]
    dup_lines = (len(lines) - len(set(lines))) / len(lines) if len(lines) >= 4 else 0.0
    toks = tokens(text)
    grams = [tuple(toks[i:i + 5]) for i in range(len(toks) - 4)]
    dup_grams = 0.0
    if len(grams) >= 10:
        counts = Counter(grams)
        dup_grams = sum(c - 1 for c in counts.values()) / len(grams)
    return _ramp(max(dup_lines, dup_grams), 0.3, 0.8)


def symbols_score(text: str) -> float:
    if not text:
        return 0.0
    n = len(text)
    spaces = sum(1 for ch in text if ch.isspace())
    symbols = sum(1 for ch in text if not ch.isalnum() and not ch.isspace())
    return min(_ramp(symbols / n, 0.45, 0.8), _ramp(spaces / n, 0.5, 0.9))


def encoding_score(text: str) -> float:
    if not text:
        return 1.0
    bad = text.count("\ufffd") + len(_CONTROL.findall(text)) + 2 * len(_MOJIBAKE.findall(text))
    return max(0.0, 1.0 - 20.0 * bad / len(text))


def format_problem(record: dict[str, Any], text: str) -> str | None:
    """Why the record is incomplete for its format, or None."""
    fmt = detect_format(record)
    if fmt == "prompt_completion":
        for f in ("prompt", "completion"):
            if not isinstance(record.get(f), str) or not record[f].strip():
                return f"empty {f}"
    elif fmt in ("messages", "sharegpt"):
        turns = record.get("messages" if fmt == "messages" else "conversations")
        if not isinstance(turns, list) or not turns:
            return "empty conversation"
        last = turns[-1] if isinstance(turns[-1], dict) else {}
        role = last.get("role") or {"gpt": "assistant"}.get(last.get("from", ""), last.get("from"))
        if role != "assistant":
            return "conversation does not end with an assistant turn"
        if not flatten_messages([last]).strip():
            return "empty assistant turn"
    elif fmt == "alpaca":
        if not str(record.get("output") or "").strip():
            return "empty output"
    elif fmt == "preference":
        for f in ("chosen", "rejected"):
            if not record.get(f):
                return f"empty {f}"
    if not text.strip():
        return "empty text"
    if text.count("```") % 2:
        return "unbalanced code fence"
    return None


def heuristic_scores(record: dict[str, Any], text: str, min_words: int, max_words: int) -> tuple[dict[str, float], str | None]:
    problem = format_problem(record, text)
    return {
        "length": round(length_score(len(text.split()), min_words, max_words), 4),
        "repetition": round(repetition_score(text), 4),
        "symbols": round(symbols_score(text), 4),
        "format": 0.0 if problem else 1.0,
        "encoding": round(encoding_score(text), 4),
    }, problem


def composite(scores: dict[str, float], weights: dict[str, float]) -> float:
    total = sum(weights.get(k, DEFAULT_WEIGHTS.get(k, 1.0)) for k in scores)
    if total <= 0:
        return 0.0
    return round(sum(v * weights.get(k, DEFAULT_WEIGHTS.get(k, 1.0)) for k, v in scores.items()) / total, 4)


def score(input_path: str | Path, output_path: str | Path, *, weights: dict[str, float] | None = None,
          minimums: dict[str, float] | None = None, min_words: int = 3, max_words: int = 20000,
          keep_rejected: bool = False, judge: JudgeFn | None = None, judge_batch: int = 32,
          text_key: str | None = None, rejects_path: str | Path | None = None, progress: ProgressFn = ignore,
          should_stop: StopFn = never) -> StepResult:
    """Score every row (``scores`` field: signals + ``composite``) and drop the rows below a minimum; each
    rejection (row, source, failing signals, format problem) goes to ``rejects_path``
    (default ``<output>.rejected.jsonl``)."""
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    mins = dict(DEFAULT_MINIMUMS if minimums is None else {**DEFAULT_MINIMUMS, **minimums})
    known = (*SIGNALS, "judge", "composite")
    unknown = sorted(k for k in set(weights) | set(mins) if k not in known)
    if unknown:
        raise DataError(f"unknown score signal(s) {unknown}; known: {', '.join(known)}")
    output_path = Path(output_path)
    rejects_path = Path(rejects_path) if rejects_path else output_path.with_name(output_path.stem + ".rejected.jsonl")
    prog = Progress()
    by_signal: Counter[str] = Counter()
    sums: Counter[str] = Counter()
    with RecordWriter(output_path) as writer, rejects_path.open("w", encoding="utf-8") as rejects:
        batch: list[tuple[dict[str, Any], str, str]] = []

        def flush() -> None:
            judged = judge([(r, t) for r, _, t in batch]) if judge else [None] * len(batch)
            for (rec, src, text), j in zip(batch, judged, strict=True):
                prog.rows_in += 1
                scores, problem = heuristic_scores(rec, text, min_words, max_words)
                if j is not None:
                    scores["judge"] = round(float(j), 4)
                scores["composite"] = composite({k: v for k, v in scores.items()}, weights)
                for k, v in scores.items():
                    sums[k] += v
                failed = [k for k, m in mins.items() if k in scores and scores[k] < m]
                if failed:
                    by_signal.update(failed)
                    rejects.write(json.dumps({"row": prog.rows_in, "source": src, "failed": failed, "scores": scores,
                                              **({"format_problem": problem} if problem else {})}) + "\n")
                    if not keep_rejected:
                        prog.dropped += 1
                        continue
                    writer.write({**rec, "scores": scores, "rejected_by": failed})
                else:
                    writer.write({**rec, "scores": scores})
                prog.rows_out += 1
            batch.clear()
            progress(prog)
            if should_stop():
                raise Cancelled("score cancelled")

        for item in texts(input_path, text_key):
            batch.append(item)
            if len(batch) >= judge_batch:
                flush()
        if batch:
            flush()
    means = {k: round(v / prog.rows_in, 4) for k, v in sums.items()} if prog.rows_in else {}
    return StepResult("score", str(output_path), prog.rows_in, prog.rows_out,
                      dropped={f"low_{k}": v for k, v in sorted(by_signal.items())} if not keep_rejected else {},
                      files={"rejected": str(rejects_path)},
                      details={"rejected_by_signal": dict(sorted(by_signal.items())), "mean_scores": means,
                               "minimums": mins, "weights": weights, "sha256": writer.sha256})
