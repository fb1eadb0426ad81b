"""Word n-gram hashes, vectorised: the shared tokeniser of decontamination (and of the repetition signal).

Tokens are ``\\w+`` runs of the NFC-normalised, lowercased text, so whitespace, punctuation and case edits do
not hide an overlap. An n-gram's hash is a 64-bit position-weighted combination of its tokens' CRC-32s."""

from __future__ import annotations

import re
import unicodedata
import zlib

import numpy as np

_WORD = re.compile(r"\w+")
_MULT = np.random.RandomState(20240613).randint(1, 2**62, size=64, dtype=np.uint64) * 2 + 1


def tokens(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFC", text).lower())


def gram_hashes(toks: list[str], n: int, *, short_whole: bool = False) -> np.ndarray:
    """uint64 hashes of every n-gram of ``toks``. With ``short_whole``, a text shorter than ``n`` tokens gives one
    hash of all its tokens (an evaluation item too short for an n-gram is matched whole)."""
    if len(toks) < n:
        if not short_whole or not toks:
            return np.empty(0, dtype=np.uint64)
        n = len(toks)
    units = np.fromiter((zlib.crc32(t.encode("utf-8")) for t in toks), dtype=np.uint64, count=len(toks))
    m = len(units) - n + 1
    with np.errstate(over="ignore"):
        acc = units[:m] * _MULT[0]
        for j in range(1, n):
            acc = (acc ^ (acc >> np.uint64(29))) + units[j:j + m] * _MULT[j % len(_MULT)]
        acc ^= np.uint64(n) * _MULT[63]  # length in the hash: a whole short item never equals a longer n-gram
    return acc
