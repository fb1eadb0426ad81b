"""Text normalisation, shingles and MinHash signatures, vectorised with numpy.

A signature here is exactly what ``datasketch.MinHash(num_perm, seed)`` (scheme ``affine32``, its default since
2.0) computes when fed the same 32-bit shingle hashes: the permutations come from datasketch and the
arithmetic is the same (``fmix32(h)``, then ``a * h + b`` mod 2^32, minimum over shingles). What differs is the
speed: all shingles of a document go through the permutations as one numpy array instead of one
``MinHash.update`` call per shingle (a test checks the two agree bit for bit)::

    hasher = MinHasher(num_perm=128, shingle_size=5)
    sig = hasher.signature("some document text ...")      # np.uint32[num_perm]
    digest = exact_digest("Some  document text")            # 16 bytes of SHA-256 of the normalised text
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib

import numpy as np
from datasketch import MinHash
from datasketch.minhash import _fmix

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
#: Shingles pushed through the permutations at once (bounds the temporary array: BLOCK x num_perm x 4 bytes).
BLOCK = 4096
EMPTY = np.uint32(0xFFFFFFFF)


def normalize(text: str, lowercase: bool = True) -> str:
    """NFC, whitespace runs collapsed to one space, stripped (and lowercased): what "the same text" means."""
    text = _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()
    return text.lower() if lowercase else text


def exact_digest(text: str, lowercase: bool = True) -> bytes:
    """First 16 bytes of SHA-256 of the normalised text (collisions: ~2^-64 for a billion rows)."""
    return hashlib.sha256(normalize(text, lowercase).encode("utf-8")).digest()[:16]


class MinHasher:
    """Shingles a text (word or character n-grams) and computes its MinHash signature."""

    def __init__(self, num_perm: int = 128, shingle_size: int = 5, unit: str = "words", lowercase: bool = True,
                 seed: int = 1) -> None:
        self.num_perm, self.shingle_size, self.unit, self.lowercase, self.seed = num_perm, shingle_size, unit, lowercase, seed
        a, b = MinHash(num_perm=num_perm, seed=seed).permutations  # datasketch's own affine32 permutations
        self.a = np.ascontiguousarray(a, dtype=np.uint32)
        self.b = np.ascontiguousarray(b, dtype=np.uint32)
        # Odd 64-bit multipliers combine the k token hashes of a shingle (position-dependent, so order matters).
        self.mult = np.random.RandomState(seed + 7919).randint(1, 2**62, size=shingle_size, dtype=np.uint64) * 2 + 1

    def shingle_hashes(self, text: str) -> np.ndarray:
        """32-bit hashes of the text's shingles (duplicates kept: they do not change a minimum)."""
        text = normalize(text, self.lowercase)
        if self.unit == "words":
            tokens = _WORD.findall(text)
            if not tokens:
                return np.empty(0, dtype=np.uint32)
            units = np.fromiter((zlib.crc32(t.encode("utf-8")) for t in tokens), dtype=np.uint64, count=len(tokens))
        else:
            units = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
            if not len(units):
                return np.empty(0, dtype=np.uint32)
        k = min(self.shingle_size, len(units))  # a text shorter than one shingle is one shingle
        n = len(units) - k + 1
        with np.errstate(over="ignore"):
            acc = units[:n] * self.mult[0]
            for j in range(1, k):
                acc += units[j:j + n] * self.mult[j]
        return (acc >> np.uint64(32)).astype(np.uint32)

    def signature_of_hashes(self, hv: np.ndarray) -> np.ndarray:
        """``datasketch.MinHash.update_batch`` of these hash values, vectorised: np.uint32[num_perm]."""
        sig = np.full(self.num_perm, EMPTY, dtype=np.uint32)
        if not len(hv):
            return sig
        with np.errstate(over="ignore"):
            mixed = _fmix(hv.astype(np.uint32), 32)
            for start in range(0, len(mixed), BLOCK):
                block = np.multiply.outer(mixed[start:start + BLOCK], self.a)
                block += self.b
                np.minimum(sig, block.min(axis=0), out=sig)
        return sig

    def signature(self, text: str) -> np.ndarray:
        return self.signature_of_hashes(self.shingle_hashes(text))


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Estimated Jaccard similarity of two signatures (fraction of equal positions)."""
    return float(np.count_nonzero(sig_a == sig_b)) / len(sig_a)
