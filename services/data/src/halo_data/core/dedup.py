"""Exact and fuzzy deduplication in one streaming pass; first occurrence wins.

* exact: SHA-256 of the normalised text (NFC, whitespace collapsed, lowercased unless told otherwise);
* fuzzy: MinHash signatures (:mod:`halo_data.core.minhash`, datasketch's permutations) and an LSH index whose
  band layout is datasketch's optimum for the threshold, weighted towards recall. Each row is *queried, then inserted*: a row whose
  best candidate's estimated Jaccard similarity reaches the threshold is dropped as a duplicate of that
  candidate; otherwise it is kept and indexed. Candidates are verified against a 16-bit fingerprint of their
  signature, which removes the banding's false positives below the threshold.

Memory grows with the *kept* rows only (per kept row: one entry per band plus ``2 * num_perm`` bytes of
fingerprint and 16 bytes of digest), never with the file: rows are read, hashed and written one batch at a
time. Signatures are computed by ``workers`` processes, in order, a bounded number of batches ahead.

Every dropped row is written to the clusters file::

    {"row": 7, "source": "raw.jsonl:7", "duplicate_of": 2, "kind": "fuzzy", "similarity": 0.91}
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from halo_common.records import RecordWriter

from halo_data.core.common import Cancelled, Progress, ProgressFn, StepResult, StopFn, ignore, never, texts
from halo_data.core.minhash import MinHasher, exact_digest, jaccard, optimal_bands

#: Inputs smaller than this are hashed in-process when ``workers`` is 0 (auto).
SMALL_INPUT_BYTES = 16 << 20
#: Fingerprint rows per storage chunk (grown chunk by chunk, never copied).
_CHUNK = 8192


@dataclass(frozen=True)
class DedupConfig:
    method: str = "fuzzy"
    threshold: float = 0.85
    num_perm: int = 128
    shingle_size: int = 5
    shingle_unit: str = "words"
    lowercase: bool = True
    workers: int = 0
    minhash_seed: int = 1
    batch_docs: int = 512
    #: A batch also ends at this many characters of text, so long documents do not make batches large.
    batch_chars: int = 4 << 20

    def hasher(self) -> MinHasher:
        return MinHasher(self.num_perm, self.shingle_size, self.shingle_unit, self.lowercase, self.minhash_seed)

    def n_workers(self, input_bytes: int | None = None) -> int:
        """``workers``, or for 0: one per core, except for inputs under 16 MB (starting processes costs more)."""
        if self.workers:
            return self.workers
        if input_bytes is not None and input_bytes < SMALL_INPUT_BYTES:
            return 1
        return os.cpu_count() or 1


#: Weights of false positives / false negatives when choosing the band layout. Candidates are verified, so a
#: false positive of the banding costs one fingerprint comparison while a false negative loses a duplicate:
#: favour recall (at threshold 0.85, 128 permutations: 11 bands of 11 rows find 98% of pairs at J = 0.9,
#: where datasketch's equal weighting, 8 x 16, finds 81%).
FP_WEIGHT, FN_WEIGHT = 0.1, 0.9


def band_layout(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band): datasketch's MinHashLSH optimum for the weights above."""
    return optimal_bands(threshold, num_perm, FP_WEIGHT, FN_WEIGHT)


class LSHIndex:
    """Banded LSH over kept signatures with verification: :meth:`query` then :meth:`insert`."""

    def __init__(self, threshold: float, num_perm: int) -> None:
        self.threshold, self.num_perm = threshold, num_perm
        self.bands, self.rows = band_layout(threshold, num_perm)
        self.tables: list[dict[int, Any]] = [{} for _ in range(self.bands)]
        self._chunks: list[np.ndarray] = []
        self._row_of: list[int] = []  # slot -> input row number
        self.size = 0

    def _keys(self, sig: np.ndarray) -> list[int]:
        r = self.rows
        # hash() of the band's bytes: the index lives in this process only, so a per-process hash seed is fine.
        return [hash(sig[i * r:(i + 1) * r].tobytes()) for i in range(self.bands)]

    def _fingerprint(self, slot: int) -> np.ndarray:
        return self._chunks[slot // _CHUNK][slot % _CHUNK]

    def query(self, sig: np.ndarray) -> tuple[list[int], tuple[int, float] | None]:
        """``(band keys, (row, similarity) of the most similar kept row at or above the threshold, or None)``."""
        keys = self._keys(sig)
        cands: set[int] = set()
        for table, key in zip(self.tables, keys, strict=True):
            hit = table.get(key)
            if hit is None:
                continue
            if isinstance(hit, int):
                cands.add(hit)
            else:
                cands.update(hit)
        best: tuple[int, float] | None = None
        if cands:
            fp = (sig & 0xFFFF).astype(np.uint16)
            for slot in cands:
                sim = jaccard(fp, self._fingerprint(slot))
                if sim >= self.threshold and (best is None or sim > best[1]):
                    best = (self._row_of[slot], sim)
        return keys, best

    def insert(self, keys: list[int], sig: np.ndarray, row: int) -> None:
        slot = self.size
        if slot % _CHUNK == 0:
            self._chunks.append(np.empty((_CHUNK, self.num_perm), dtype=np.uint16))
        self._chunks[-1][slot % _CHUNK] = sig & 0xFFFF
        self._row_of.append(row)
        self.size += 1
        for table, key in zip(self.tables, keys, strict=True):
            hit = table.get(key)
            if hit is None:
                table[key] = slot
            elif isinstance(hit, int):
                table[key] = [hit, slot]
            else:
                hit.append(slot)


# ---- signature workers ------------------------------------------------------------------------------------
_HASHER: MinHasher | None = None


def _init_worker(cfg: DedupConfig) -> None:
    global _HASHER
    _HASHER = cfg.hasher()


def _sign(batch: list[str]) -> np.ndarray:
    assert _HASHER is not None
    out = np.empty((len(batch), _HASHER.num_perm), dtype=np.uint32)
    for i, text in enumerate(batch):
        out[i] = _HASHER.signature(text)
    return out


def _pool(workers: int, cfg: DedupConfig) -> ProcessPoolExecutor:
    # Not fork: the service runs steps in a thread beside the event loop, and forking a threaded process can
    # inherit held locks. forkserver starts workers from a clean single-threaded server.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(cfg,))


# ---- the step -----------------------------------------------------------------------------------------------
def dedup(input_path: str | Path, output_path: str | Path, cfg: DedupConfig, *, text_key: str | None = None,
          clusters_path: str | Path | None = None, progress: ProgressFn = ignore,
          should_stop: StopFn = never) -> StepResult:
    """Deduplicate ``input_path`` into ``output_path`` (formats by suffix); dropped rows go to ``clusters_path``
    (default: ``<output>.clusters.jsonl``). Raises :class:`DataError` for bad input, :class:`Cancelled` when
    ``should_stop()`` turns true (the partial output is removed)."""
    output_path = Path(output_path)
    clusters_path = Path(clusters_path) if clusters_path else output_path.with_name(output_path.stem + ".clusters.jsonl")
    fuzzy = cfg.method == "fuzzy"
    index = LSHIndex(cfg.threshold, cfg.num_perm) if fuzzy else None
    seen: dict[bytes, int] = {}
    counts = {"exact": 0, "fuzzy": 0}
    cluster_sizes: dict[int, int] = {}
    prog = Progress()
    size = Path(input_path).expanduser().stat().st_size if Path(input_path).expanduser().is_file() else None
    workers = cfg.n_workers(size) if fuzzy else 0
    hasher = cfg.hasher() if fuzzy and workers <= 1 else None
    pool = _pool(workers, cfg) if fuzzy and workers > 1 else None
    writer = RecordWriter(output_path)
    clusters_tmp = clusters_path.with_name(f".{clusters_path.name}.partial")
    clusters = clusters_tmp.open("w", encoding="utf-8")

    def handle(batch: list[tuple[dict[str, Any], str, str]], sigs: np.ndarray | None) -> None:
        for i, (rec, src, text) in enumerate(batch):
            prog.rows_in += 1
            row = prog.rows_in
            digest = exact_digest(text, cfg.lowercase)
            dup: tuple[str, int, float] | None = None
            if digest in seen:
                dup = ("exact", seen[digest], 1.0)
            elif index is not None and sigs is not None:
                keys, best = index.query(sigs[i])
                if best is not None:
                    dup = ("fuzzy", best[0], best[1])
                else:
                    index.insert(keys, sigs[i], row)
            if dup is None:
                seen[digest] = row
                writer.write(rec)
                prog.rows_out += 1
                continue
            kind, of, sim = dup
            counts[kind] += 1
            prog.dropped += 1
            cluster_sizes[of] = cluster_sizes.get(of, 1) + 1
            clusters.write(json.dumps({"row": row, "source": src, "duplicate_of": of, "kind": kind,
                                       "similarity": round(sim, 4)}) + "\n")
        progress(prog)

    try:
        pending: deque[tuple[list[tuple[dict[str, Any], str, str]], Future[np.ndarray] | None]] = deque()
        ahead = 2 * workers if pool else 0
        batch: list[tuple[dict[str, Any], str, str]] = []
        chars = 0

        def submit(b: list[tuple[dict[str, Any], str, str]]) -> None:
            if should_stop():
                raise Cancelled("dedup cancelled")
            if pool is not None:
                pending.append((b, pool.submit(_sign, [t for _, _, t in b])))
                while len(pending) > ahead:
                    done_batch, fut = pending.popleft()
                    handle(done_batch, fut.result() if fut else None)
            else:
                sigs = np.stack([hasher.signature(t) for _, _, t in b]) if hasher else None
                handle(b, sigs)

        for item in texts(input_path, text_key):
            batch.append(item)
            chars += len(item[2])
            if len(batch) >= cfg.batch_docs or chars >= cfg.batch_chars:
                submit(batch)
                batch, chars = [], 0
        if batch:
            submit(batch)
        while pending:
            done_batch, fut = pending.popleft()
            handle(done_batch, fut.result() if fut else None)
        writer.close()
        clusters.close()
        clusters_tmp.replace(clusters_path)
    except BaseException:
        writer.abort()
        clusters.close()
        clusters_tmp.unlink(missing_ok=True)
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    details: dict[str, Any] = {"method": cfg.method, "clusters": len(cluster_sizes),
                               "largest_cluster": max(cluster_sizes.values(), default=0), "sha256": writer.sha256}
    if index is not None:
        details.update({"threshold": cfg.threshold, "num_perm": cfg.num_perm, "bands": index.bands,
                        "rows_per_band": index.rows, "workers": max(1, workers)})
    return StepResult("dedup", str(output_path), prog.rows_in, prog.rows_out,
                      dropped={k: v for k, v in counts.items() if v}, files={"clusters": str(clusters_path)},
                      details=details)
