"""``inspect``: counts, formats, fields, text lengths (min/mean/p50/p90/max and a log2 histogram of words) and
a few samples of a data file, in one streaming pass (quantiles from a fixed-size reservoir)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

from halo_common.records import RecordError, detect_format, iter_records, record_text, sha256_file
from halo_schemas.data import HistogramBin, InspectReport

from halo_data.core.common import DataError

RESERVOIR = 10_000


def _stats(values: list[int], lo: int, hi: int, total: int, n: int) -> dict[str, float]:
    if not n:
        return {}
    values = sorted(values)
    q = lambda p: float(values[min(len(values) - 1, int(p * len(values)))])  # noqa: E731
    return {"min": float(lo), "mean": round(total / n, 2), "p50": q(0.5), "p90": q(0.9), "max": float(hi)}


def inspect(path: str | Path, *, text_key: str | None = None, samples: int = 3, max_rows: int | None = None,
            seed: int = 0) -> InspectReport:
    path = Path(path).expanduser()
    problems: list[str] = []
    formats: Counter[str] = Counter()
    fields: Counter[str] = Counter()
    rng = random.Random(seed)
    chars_r: list[int] = []
    words_r: list[int] = []
    bins: Counter[int] = Counter()
    rows = 0
    cmin = wmin = 1 << 62
    cmax = wmax = ctot = wtot = 0
    shown: list[dict[str, Any]] = []
    try:
        for rec, src in iter_records(path, skip_bad=True, problems=problems):
            rows += 1
            formats[detect_format(rec) or "unknown"] += 1
            fields.update(rec.keys())
            if len(shown) < samples:
                shown.append(rec)
            try:
                text = record_text(rec, text_key, src)
            except RecordError as exc:
                if text_key:  # an unknown key is the user's mistake: say so once, with the keys seen
                    raise DataError(str(exc)) from None
                text = ""
            c, w = len(text), len(text.split())
            cmin, cmax, ctot = min(cmin, c), max(cmax, c), ctot + c
            wmin, wmax, wtot = min(wmin, w), max(wmax, w), wtot + w
            bins[w.bit_length()] += 1
            if len(chars_r) < RESERVOIR:
                chars_r.append(c)
                words_r.append(w)
            else:
                j = rng.randrange(rows)
                if j < RESERVOIR:
                    chars_r[j], words_r[j] = c, w
            if max_rows is not None and rows >= max_rows:
                break
    except (FileNotFoundError, IsADirectoryError, ValueError) as exc:
        raise DataError(str(exc)) from None
    if not rows and not problems:
        raise DataError(f"{path}: no records (an empty input is an error)")
    histogram = [HistogramBin(lo=0 if b == 0 else 1 << (b - 1), hi=1 if b == 0 else 1 << b, count=n)
                 for b, n in sorted(bins.items())]
    return InspectReport(path=str(path), rows=rows, bad_rows=len(problems), formats=dict(formats),
                         fields=dict(fields.most_common()), chars=_stats(chars_r, cmin, cmax, ctot, rows),
                         words=_stats(words_r, wmin, wmax, wtot, rows), histogram=histogram, samples=shown,
                         problems=problems[:20], sha256=sha256_file(path), size_bytes=path.stat().st_size)
