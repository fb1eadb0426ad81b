"""Keep rows by a score column: ``min``/``max`` thresholds in one pass, or the top K percent in two (the first
pass reads only the column's values: 8 bytes a row)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from halo_common.records import RecordWriter

from halo_data.core.common import (
    Cancelled,
    DataError,
    Progress,
    ProgressFn,
    StepResult,
    StopFn,
    get_path,
    ignore,
    never,
    records,
)


def _value(rec: dict, column: str, src: str, missing: str) -> float | None:
    try:
        value = get_path(rec, column)
    except KeyError:
        if missing == "error":
            raise DataError(f"{src}: no column {column!r}; the record has [{', '.join(sorted(rec))}] "
                            "(score the data first, or set missing: drop|keep)") from None
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"{src}: column {column!r} must be a number, got {type(value).__name__}")
    return float(value)


def filter_rows(input_path: str | Path, output_path: str | Path, *, column: str = "scores.composite",
                min: float | None = None, max: float | None = None, top_percent: float | None = None,
                missing: str = "error", progress: ProgressFn = ignore, should_stop: StopFn = never) -> StepResult:
    """Write the rows of ``input_path`` that pass the rule to ``output_path``."""
    quota: int | None = None
    cutoff = -math.inf
    if top_percent is not None:
        values = np.fromiter((v for rec, src in records(input_path)
                              if (v := _value(rec, column, src, missing)) is not None), dtype=np.float64)
        quota = math.ceil(len(values) * top_percent / 100.0)
        if quota:
            cutoff = float(np.sort(values)[::-1][quota - 1])
        # Rows above the cutoff all pass; rows equal to it pass in input order until the quota is met (ties).
        above = int(np.count_nonzero(values > cutoff))
        ties_left = quota - above
    prog = Progress()
    dropped = {"below": 0, "missing": 0}
    with RecordWriter(Path(output_path)) as writer:
        for rec, src in records(input_path):
            prog.rows_in += 1
            v = _value(rec, column, src, missing)
            if v is None:
                keep = missing == "keep"
                reason = "missing"
            elif quota is not None:
                keep = v > cutoff or (v == cutoff and ties_left > 0)
                if keep and v == cutoff:
                    ties_left -= 1
                reason = "below"
            else:
                keep = (min is None or v >= min) and (max is None or v <= max)
                reason = "below"
            if keep:
                writer.write(rec)
                prog.rows_out += 1
            else:
                dropped[reason] += 1
                prog.dropped += 1
            if prog.rows_in % 2000 == 0:
                progress(prog)
                if should_stop():
                    raise Cancelled("filter cancelled")
    progress(prog)
    rule = {"top_percent": top_percent, "cutoff": cutoff if quota else None} if quota is not None else {"min": min, "max": max}
    return StepResult("filter", str(output_path), prog.rows_in, prog.rows_out,
                      dropped={k: v for k, v in dropped.items() if v},
                      details={"column": column, **rule, "sha256": writer.sha256})
