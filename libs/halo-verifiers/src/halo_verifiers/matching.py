"""Compare a program's output with the expected output: exact, contains, regex or numeric.

Usage::

    m = MatchParams(mode="numeric", rel_tol=1e-6)
    outputs_match("3.14159\\n", "3.1416", m)   # -> False (rel_tol too tight); True with rel_tol=1e-4

Modes (all apply the normalisation first: ``\\r\\n`` -> ``\\n``, trailing spaces on each line and
trailing blank lines dropped; ``ignore_case`` lowercases both):

* ``exact`` — equal after normalisation.
* ``contains`` — the expected text occurs in the output.
* ``regex`` — the expected text is a regular expression that must match the whole output (DOTALL).
* ``numeric`` — the same count of numbers, pairwise within ``rel_tol`` / ``abs_tol``
  (``math.isclose``); non-numeric text is ignored. Numbers include ints, decimals, exponents,
  ``inf`` and ``nan`` (nan equals nan).
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field

from halo_verifiers.base import VerifierParams

_NUM = re.compile(r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf(?:inity)?|nan)", re.I)


class MatchParams(VerifierParams):
    """How program output is compared with the expected output."""

    mode: Literal["exact", "contains", "regex", "numeric"] = Field(
        default="exact", description="exact | contains | regex (full match) | numeric (tolerances).")
    ignore_case: bool = Field(default=False, description="Compare case-insensitively.")
    rel_tol: float = Field(default=1e-6, ge=0, description="numeric: relative tolerance.")
    abs_tol: float = Field(default=1e-9, ge=0, description="numeric: absolute tolerance.")


def normalize(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def numbers(text: str) -> list[float]:
    return [float(m.group(0)) for m in _NUM.finditer(text)]


def outputs_match(actual: str, expected: str, params: MatchParams | None = None) -> bool:
    """True when ``actual`` matches ``expected`` under ``params`` (default: exact)."""
    p = params or MatchParams()
    a, e = normalize(actual), normalize(expected)
    if p.ignore_case:
        a, e = a.lower(), e.lower()
    if p.mode == "exact":
        return a == e
    if p.mode == "contains":
        return e in a
    if p.mode == "regex":
        try:
            return re.fullmatch(e, a, re.S | (re.I if p.ignore_case else 0)) is not None
        except re.error:
            return False
    got, want = numbers(a), numbers(e)
    if len(got) != len(want) or not want:
        return False
    for g, w in zip(got, want, strict=True):
        if math.isnan(w) or math.isnan(g):
            if not (math.isnan(w) and math.isnan(g)):
                return False
        elif not math.isclose(g, w, rel_tol=p.rel_tol, abs_tol=p.abs_tol):
            return False
    return True
