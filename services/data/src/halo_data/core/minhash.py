"""Text normalisation, shingles and MinHash signatures, vectorised with numpy.

A signature here is exactly what ``datasketch.MinHash(num_perm, seed)`` (scheme ``affine32``, its default since
2.0) computes when fed the same 32-bit shingle hashes: the same permutations (drawn the way datasketch draws
them) and the same arithmetic (``fmix32(h)``, then ``a * h + b`` mod 2^32, minimum over shingles), and the LSH
band layout is datasketch's optimisation. What differs is the speed: all shingles of a document go through the
permutations as one numpy array instead of one ``MinHash.update`` call per shingle. Tests check both agree
with datasketch bit for bit; datasketch itself is not imported here, because importing it loads scipy
(~60 MB of resident memory and half a second in every worker process)::

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

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
#: Shingles pushed through the permutations at once (bounds the temporary array: BLOCK x num_perm x 4 bytes).
BLOCK = 4096
EMPTY = np.uint32(0xFFFFFFFF)
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))


def fmix32(hv: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (datasketch's pre-mix of every input hash)."""
    s1, m1, s2, m2, s3 = _FMIX32
    with np.errstate(over="ignore"):
        hv = hv ^ (hv >> s1)
        hv = hv * m1
        hv = hv ^ (hv >> s2)
        hv = hv * m2
        return hv ^ (hv >> s3)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters: odd ``a`` and any ``b``, from ``RandomState(seed)``."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def optimal_bands(threshold: float, num_perm: int, fp_weight: float, fn_weight: float) -> tuple[int, int]:
    """datasketch ``MinHashLSH``'s choice of (bands, rows): the layout minimising the weighted areas of false
    positives (below the threshold) and false negatives (above it) of the S-curve ``1 - (1 - s^r)^b``."""
    lo, hi = np.linspace(0.0, threshold, 2001), np.linspace(threshold, 1.0, 2001)
    best, opt = float("inf"), (0, 0)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - lo ** r) ** b, lo)
            fn = np.trapezoid((1 - hi ** r) ** b, hi)
            err = fp * fp_weight + fn * fn_weight
            if err < best:
                best, opt = err, (b, r)
    return opt


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
        self.a, self.b = permutations(num_perm, seed)
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
            mixed = fmix32(hv.astype(np.uint32))
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
