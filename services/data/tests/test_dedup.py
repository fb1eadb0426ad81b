"""Dedup: signatures equal datasketch's, planted near-duplicates are found (recall / false positives printed),
exact normalisation, clusters, parallel == serial, and bad input named."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash
from halo_data.core.common import DataError
from halo_data.core.dedup import DedupConfig, dedup
from halo_data.core.minhash import MinHasher
from halo_data.core.ngrams import tokens


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_signature_is_datasketch_minhash_of_the_same_shingles() -> None:
    hasher = MinHasher(num_perm=64, shingle_size=3, seed=7)
    hv = hasher.shingle_hashes("The quick brown fox jumps over the lazy dog, twice: the quick brown fox!")
    reference = MinHash(num_perm=64, seed=7, hashfunc=lambda x: x)
    reference.update_batch([int(x) for x in hv])
    assert np.array_equal(reference.hashvalues, hasher.signature_of_hashes(hv))


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.85, 0.9])
def test_band_layout_is_datasketchs_optimum(threshold: float) -> None:
    from datasketch.lsh import _optimal_param
    from halo_data.core.minhash import optimal_bands, permutations

    for fp, fn in ((0.5, 0.5), (0.1, 0.9)):
        assert optimal_bands(threshold, 128, fp, fn) == _optimal_param(threshold, 128, fp, fn)
    a, b = permutations(128, 3)
    assert np.array_equal(np.stack([a, b]), MinHash(num_perm=128, seed=3).permutations)


def shingle_set(text: str, k: int = 5) -> set[tuple[str, ...]]:
    toks = tokens(text)
    return {tuple(toks[i:i + k]) for i in range(len(toks) - k + 1)}


def true_jaccard(a: str, b: str) -> float:
    sa, sb = shingle_set(a), shingle_set(b)
    return len(sa & sb) / len(sa | sb)


def planted_corpus(rng: random.Random, n_base: int = 300, words: int = 120) -> tuple[list[str], list[tuple[int, int, float]]]:
    """Base documents of random words plus edited copies (k words replaced at random places); the true Jaccard
    similarity of every planted pair's 5-shingle sets is computed exactly."""
    vocab = [f"tok{i}" for i in range(50_000)]
    docs: list[str] = []
    pairs: list[tuple[int, int, float]] = []
    for _ in range(n_base):
        base = [rng.choice(vocab) for _ in range(words)]
        docs.append(" ".join(base))
        edits = rng.choice([0, 1, 2, 3, 6, 10, 14, 20, 30])
        copy = list(base)
        for pos in rng.sample(range(words), edits):
            copy[pos] = rng.choice(vocab)
        docs.append(" ".join(copy))
        pairs.append((len(docs) - 2, len(docs) - 1, true_jaccard(docs[-2], docs[-1])))
    return docs, pairs


def test_planted_near_duplicates_recall_and_false_positives(tmp_path: Path) -> None:
    threshold = 0.8
    docs, pairs = planted_corpus(random.Random(3))
    src = write_jsonl(tmp_path / "planted.jsonl", [{"text": d, "i": i} for i, d in enumerate(docs)])
    result = dedup(src, tmp_path / "out.jsonl", DedupConfig(threshold=threshold, num_perm=128, workers=1))
    dropped = {c["row"] - 1: c for c in read_jsonl(Path(result.files["clusters"]))}
    above = [(a, b, j) for a, b, j in pairs if j >= threshold + 0.05]
    below = [(a, b, j) for a, b, j in pairs if j <= threshold - 0.1]
    near = [(a, b, j) for a, b, j in pairs if threshold - 0.1 < j < threshold + 0.05]
    found = sum(1 for a, b, _ in above if b in dropped and dropped[b]["duplicate_of"] - 1 == a)
    false_pos = sum(1 for _, b, _ in below if b in dropped)
    recall = found / len(above)
    fp_rate = false_pos / len(below)
    print(f"\nplanted pairs: {len(above)} with J >= {threshold + 0.05:.2f}, {len(below)} with J <= {threshold - 0.1:.2f},"
          f" {len(near)} in between (not scored)")
    print(f"recall above threshold: {recall:.3f} ({found}/{len(above)}); false positives below: {fp_rate:.4f} "
          f"({false_pos}/{len(below)}); near-threshold dropped: {sum(1 for _, b, _ in near if b in dropped)}/{len(near)}")
    assert len(above) >= 50 and len(below) >= 50
    assert recall >= 0.95
    assert fp_rate <= 0.01
    # Unrelated base documents are never clustered with each other.
    assert all(row % 2 == 1 for row in dropped), "a base document was dropped"
    assert result.rows_in == len(docs) and result.rows_out == len(docs) - len(dropped)


def test_exact_dedup_normalises_and_reports_clusters(tmp_path: Path) -> None:
    rows = [{"text": "Hello   World"}, {"text": "hello world"}, {"text": " HELLO WORLD\n"}, {"text": "other"},
            {"messages": [{"role": "user", "content": "other"}]}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = dedup(src, tmp_path / "out.jsonl", DedupConfig(method="exact"))
    assert [r.get("text") for r in read_jsonl(tmp_path / "out.jsonl")] == ["Hello   World", "other"]
    clusters = read_jsonl(Path(result.files["clusters"]))
    assert [(c["row"], c["duplicate_of"], c["kind"]) for c in clusters] == [(2, 1, "exact"), (3, 1, "exact"), (5, 4, "exact")]
    assert clusters[0]["source"] == "in.jsonl:2"
    assert result.dropped == {"exact": 3} and result.details["clusters"] == 2 and result.details["largest_cluster"] == 3


def test_case_sensitive_exact_and_message_key(tmp_path: Path) -> None:
    rows = [{"conv": [{"role": "user", "content": "Same"}]}, {"conv": [{"role": "user", "content": "same"}]}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    assert dedup(src, tmp_path / "a.jsonl", DedupConfig(method="exact", lowercase=False), text_key="conv").rows_out == 2
    assert dedup(src, tmp_path / "b.jsonl", DedupConfig(method="exact"), text_key="conv").rows_out == 1


def test_parallel_workers_give_the_serial_result(tmp_path: Path) -> None:
    docs, _ = planted_corpus(random.Random(5), n_base=120)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": d} for d in docs])
    cfg = dict(threshold=0.8, batch_docs=16)
    one = dedup(src, tmp_path / "one.jsonl", DedupConfig(workers=1, **cfg))
    two = dedup(src, tmp_path / "two.jsonl", DedupConfig(workers=2, **cfg))
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()
    assert Path(one.files["clusters"]).read_bytes() == Path(two.files["clusters"]).read_bytes()
    assert one.rows_out < one.rows_in


def test_parquet_in_and_out(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"text": "a b c d e f"}, {"text": "A  b c d e f"}, {"text": "x y z"}]),
                   tmp_path / "in.parquet")
    result = dedup(tmp_path / "in.parquet", tmp_path / "out.parquet", DedupConfig(method="fuzzy", workers=1))
    assert pq.read_table(tmp_path / "out.parquet").to_pylist() == [{"text": "a b c d e f"}, {"text": "x y z"}]
    assert result.rows_out == 2 and len(result.details["sha256"]) == 64


@pytest.mark.parametrize("method", ["exact", "fuzzy"])
def test_bad_input_is_named(tmp_path: Path, method: str) -> None:
    cfg = DedupConfig(method=method, workers=1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "broken"\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2:"):
        dedup(bad, tmp_path / "o.jsonl", cfg)
    assert not (tmp_path / "o.jsonl").exists()
    src = write_jsonl(tmp_path / "in.jsonl", [{"body": "x", "id": 1}])
    with pytest.raises(DataError, match=r"in\.jsonl:1: no field 'content'; the record has \[body, id\]"):
        dedup(src, tmp_path / "o.jsonl", cfg, text_key="content")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        dedup(empty, tmp_path / "o.jsonl", cfg)
