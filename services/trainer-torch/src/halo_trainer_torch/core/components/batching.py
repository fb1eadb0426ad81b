"""Batching for SFT: best-fit-decreasing packing and a padding-free row collator.

With packing, records are packed into rows of at most ``max_length`` tokens (TRL's BFD packer, which never
splits a record). The collator gives every packed record its own ``position_ids`` starting at 0 and passes
no attention mask: transformers then builds a block-diagonal causal mask (sdpa / eager) or uses varlen
kernels (flash attention), so records never attend to each other and no compute goes to padding inside a
row. Rows of a batch are padded to the longest row only; the pad tail is its own pseudo-record with
labels -100. Without packing, records are right-padded with an attention mask as usual.

Both report ``num_real_tokens`` (popped before the forward by :class:`~.hooks.HaloTrainerMixin`) so
throughput counts real tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

IGNORE = -100


def build_sft_dataset(encoded: list[dict[str, list[int]]], *, packing: bool, max_length: int) -> Any:
    """A ``datasets.Dataset`` of input_ids/labels (packed into rows with seq_lengths when ``packing``)."""
    from datasets import Dataset

    ds = Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in encoded])
    if not packing:
        return ds
    from trl.data_utils import pack_dataset

    return pack_dataset(ds, max_length, strategy="bfd")


@dataclass
class SFTCollator:
    """Collate tokenized SFT rows. ``packed=True`` expects a ``seq_lengths`` column per row."""

    pad_token_id: int
    packed: bool = True

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [list(e["input_ids"]) for e in examples]
        labels = [list(e["labels"]) for e in examples]
        width = max(len(r) for r in rows)
        batch = len(rows)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        label_t = torch.full((batch, width), IGNORE, dtype=torch.long)
        real = sum(len(r) for r in rows)
        for i, (r, lab) in enumerate(zip(rows, labels, strict=True)):
            input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            label_t[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        out: dict[str, Any] = {"input_ids": input_ids, "labels": label_t}
        if self.packed:
            position_ids = torch.zeros((batch, width), dtype=torch.long)
            for i, e in enumerate(examples):
                lengths = list(e.get("seq_lengths") or [len(rows[i])])
                pos = [p for n in lengths for p in range(n)]
                tail = width - len(pos)
                pos += list(range(tail))  # the pad tail: a pseudo-record of its own, never attended to
                position_ids[i] = torch.tensor(pos, dtype=torch.long)
                # The first token of each record has no in-record predecessor: the label shift would make the
                # previous record's last token predict it. Those positions are the *labels* of the token before,
                # i.e. label[j] is predicted from token j-1, so mask label at each record start.
                start = 0
                for n in lengths:
                    label_t[i, start] = IGNORE
                    start += n
            out["position_ids"] = position_ids
        else:
            attention = torch.zeros((batch, width), dtype=torch.long)
            for i, r in enumerate(rows):
                attention[i, : len(r)] = 1
            out["attention_mask"] = attention
        out["num_real_tokens"] = torch.tensor(real, dtype=torch.long)
        return out
