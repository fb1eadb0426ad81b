"""Packing: best-fit decreasing rows, and a packed forward that equals running each record on its own."""

from __future__ import annotations

import numpy as np
import pytest
from halo_trainer_mlx.core.batching import collate, pack_bfd
from halo_trainer_mlx.core.model import IGNORE, enable_packing, forward, load_model
from halo_training.models import resolve_model_path


def test_pack_bfd_never_splits_and_fits() -> None:
    enc = [{"input_ids": list(range(n)), "labels": list(range(n))} for n in (7, 3, 5, 2, 6, 1)]
    rows = pack_bfd(enc, max_length=8)
    assert sorted(n for r in rows for n in r.lengths) == [1, 2, 3, 5, 6, 7]
    assert all(sum(r.lengths) == len(r.input_ids) <= 8 for r in rows)
    assert len(rows) == 3  # 7+1, 6+2, 5+3: best fit fills every row
    for r in rows:  # each record's first label is masked (no in-record predecessor)
        start = 0
        for n in r.lengths:
            assert r.labels[start] == IGNORE
            start += n


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_packed_forward_equals_separate_records(arch: str) -> None:
    import mlx.core as mx

    model = load_model(resolve_model_path(f"tiny://{arch}"))
    a, b = [5, 9, 33, 100, 7], [8, 2, 44, 61]
    alone_a, alone_b = np.array(model(mx.array([a]))), np.array(model(mx.array([b])))
    enable_packing(model)
    rows = pack_bfd([{"input_ids": a, "labels": a}, {"input_ids": b, "labels": b}], max_length=16)
    batch = collate(rows, pad_id=0, packed=True)
    arr = batch.arrays
    packed = np.array(forward(model, arr["ids"], arr["positions"], arr["segments"]))
    np.testing.assert_allclose(packed[0, :5], alone_a[0], atol=1e-5)
    np.testing.assert_allclose(packed[0, 5:9], alone_b[0], atol=1e-5)
    # Without segments (one long sequence) record b would see record a: the mask is what separates them.
    joined = np.array(forward(model, arr["ids"], arr["positions"], mx.zeros_like(arr["segments"])))
    assert np.abs(joined[0, 5:9] - alone_b[0]).max() > 1e-3
    # The unpacked path (generation, evaluation without packing) is mlx-lm's own, unchanged.
    np.testing.assert_allclose(np.array(model(mx.array([a]))), alone_a, atol=0)
