"""SFT micro-batches for MLX: best-fit-decreasing packing (records never split), per-record positions and segment
ids, or right-padded rows; the epoch order is a seeded shuffle of the rows.

The loss items of a batch are its trained label positions after the next-token shift (a record's first token is
never a target: with packing its label is masked, as trainer-torch's collator does).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from halo_trainer_mlx.core.loop import Batch
from halo_trainer_mlx.core.model import IGNORE


@dataclass
class Row:
    """One training row: token ids, labels and the lengths of the records packed in it."""

    input_ids: list[int]
    labels: list[int]
    lengths: list[int]


def pack_bfd(encoded: list[dict[str, list[int]]], max_length: int) -> list[Row]:
    """Best-fit decreasing: longest record first, each into the open row with the least room that fits it."""
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]["input_ids"]), i))
    rows: list[Row] = []
    room: list[int] = []
    for i in order:
        ids, labels = encoded[i]["input_ids"], encoded[i]["labels"]
        n = len(ids)
        best = -1
        for r, free in enumerate(room):
            if n <= free and (best < 0 or free < room[best]):
                best = r
        if best < 0:
            rows.append(Row([], [], []))
            room.append(max_length)
            best = len(rows) - 1
        row = rows[best]
        row.input_ids += ids
        row.labels += [IGNORE] + list(labels[1:])  # the record's first token has no in-record predecessor
        row.lengths.append(n)
        room[best] -= n
    return rows


def unpacked(encoded: list[dict[str, list[int]]]) -> list[Row]:
    return [Row(list(e["input_ids"]), list(e["labels"]), [len(e["input_ids"])]) for e in encoded]


PAD_TO = 32


def collate(rows: list[Row], pad_id: int, packed: bool) -> Batch:
    import mlx.core as mx

    width = max(len(r.input_ids) for r in rows)
    if not packed:
        # Round padded rows up to a multiple of PAD_TO (as mlx-lm does): a few distinct shapes, so the compiled
        # training step traces a few times instead of once per batch width. Padding is masked and, with causal
        # attention on right-padded rows, never seen by a real token.
        width = -(-width // PAD_TO) * PAD_TO
    ids = np.full((len(rows), width), pad_id, dtype=np.int32)
    labels = np.full((len(rows), width), IGNORE, dtype=np.int32)
    positions = np.zeros((len(rows), width), dtype=np.int32)
    segments = np.zeros((len(rows), width), dtype=np.int32)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n], labels[i, :n] = r.input_ids, r.labels
        pos = [p for m in r.lengths for p in range(m)]
        seg = [s for s, m in enumerate(r.lengths) for _ in range(m)]
        positions[i, :n], segments[i, :n] = pos, seg
        positions[i, n:] = np.arange(width - n)
        segments[i, n:] = len(r.lengths)  # the pad tail: a pseudo-record of its own, never attended to
    trained = labels[:, 1:] != IGNORE
    items = int(trained.sum())
    # Flat (row * width + position) indices of the hidden states that predict a trained label, padded to a
    # multiple of PAD_TO with a masked slot: the LM head and the cross entropy run only there.
    b_idx, t_idx = np.nonzero(trained)
    k = max(PAD_TO, -(-items // PAD_TO) * PAD_TO)
    sel = np.zeros(k, dtype=np.int32)
    sel_labels = np.full(k, IGNORE, dtype=np.int32)
    sel[:items] = b_idx * width + t_idx
    sel_labels[:items] = labels[b_idx, t_idx + 1]
    arrays = {"ids": mx.array(ids), "labels": mx.array(labels), "sel": mx.array(sel),
              "sel_labels": mx.array(sel_labels)}
    if packed:
        arrays.update(positions=mx.array(positions), segments=mx.array(segments))
    return Batch(arrays=arrays, tokens=sum(len(r.input_ids) for r in rows), items=items)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def make_batches(rows: list[Row], batch_size: int, pad_id: int, packed: bool, order: list[int]) -> list[Batch]:
    return [collate([rows[i] for i in order[k:k + batch_size]], pad_id, packed)
            for k in range(0, len(order), batch_size)]
