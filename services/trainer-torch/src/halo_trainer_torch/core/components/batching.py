"""Batching: SFT packing with a padding-free row collator, and the shared-prompt layout for preference pairs.

**SFT.** 
With packing, records are packed into rows of at most ``max_length`` tokens (TRL's BFD packer, which never
splits a record). The collator gives every packed record its own ``position_ids`` starting at 0 and passes
no attention mask: transformers then builds a block-diagonal causal mask (sdpa / eager) or uses varlen
kernels (flash attention), so records never attend to each other and no compute goes to padding inside a
row. Rows of a batch are padded to the longest row only; the pad tail is its own pseudo-record with
labels -100. Without packing, records are right-padded with an attention mask as usual.

**Preference pairs** (:class:`SharedPromptCollator`). A padded preference batch runs every prompt twice
(once before the chosen, once before the rejected completion) and pads all 2B sequences to the longest one.
The shared-prompt layout runs each prompt once: a pair becomes ``prompt[:-1] | prompt[-1] chosen |
prompt[-1] rejected``, both branches attend to the shared prompt body and, causally, to their own tokens
(never to each other), and positions restart after the body so each branch sees exactly the positions it
has in its own sequence. The prompt's last token is repeated at the head of each branch because it predicts
the first completion token of both. Log-probs are those of the padded layout (tested to float tolerance);
the compute is the real tokens only. Pairs are packed first-fit-decreasing into rows of at most
``row_capacity`` tokens, so attention stays local to a few pairs.

Both report ``num_real_tokens`` (popped before the forward by :class:`~.hooks.HaloTrainerMixin`) so
throughput counts the tokens that are run, padding excluded.
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


@dataclass
class SharedPromptCollator:
    """Collate ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` pairs into the shared-prompt layout.

    Returns ``input_ids``, ``position_ids``, ``shift_labels`` (the token each position predicts, -100 where
    none is scored), ``sequence_index`` (which of the 2B sequences a scored position belongs to: chosen of
    pair k is k, rejected is B + k, as in a padded batch; -1 elsewhere), a boolean ``attention_mask`` of
    shape (rows, 1, width, width) (True: may attend), ``num_pairs`` (an int) and ``num_real_tokens``; and
    ``ref_chosen_logps`` / ``ref_rejected_logps`` (one per pair) when the examples carry them.
    ``row_capacity`` bounds a row's length (a longer pair gets a row of its own).
    """

    pad_token_id: int
    row_capacity: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        pairs = len(examples)
        order = sorted(range(pairs), key=lambda k: -_pair_length(examples[k]))
        rows: list[list[int]] = []
        fill: list[int] = []
        for k in order:  # first-fit decreasing
            n = _pair_length(examples[k])
            slot = next((i for i, used in enumerate(fill) if used + n <= self.row_capacity), None)
            if slot is None:
                rows.append([k])
                fill.append(n)
            else:
                rows[slot].append(k)
                fill[slot] += n
        width = max(fill)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        shift_labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        sequence_index = torch.full((len(rows), width), -1, dtype=torch.long)
        mask = torch.zeros((len(rows), 1, width, width), dtype=torch.bool)
        for r, members in enumerate(rows):
            at = 0
            for k in members:
                at = _place_pair(examples[k], k, pairs, r, at, input_ids, position_ids, shift_labels,
                                 sequence_index, mask)
            for j in range(at, width):  # the pad tail attends to itself only (a fully masked row would be NaN)
                mask[r, 0, j, j] = True
                position_ids[r, j] = j - at
        out = {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": mask,
               "shift_labels": shift_labels, "sequence_index": sequence_index,
               "num_pairs": pairs,  # a Python int: sizing the output needs no device sync
               "num_real_tokens": torch.tensor(sum(fill), dtype=torch.long)}
        for key in ("ref_chosen_logps", "ref_rejected_logps"):  # precomputed reference log-probs, pair order
            if key in examples[0]:
                out[key] = torch.tensor([e[key] for e in examples], dtype=torch.float32)
        return out


def _pair_length(e: dict[str, Any]) -> int:
    body = max(len(e["prompt_ids"]) - 1, 0)
    lead = 1 if e["prompt_ids"] else 0
    return body + 2 * lead + len(e["chosen_ids"]) + len(e["rejected_ids"])


def _place_pair(e: dict[str, Any], k: int, pairs: int, r: int, at: int, input_ids: torch.Tensor,
                position_ids: torch.Tensor, shift_labels: torch.Tensor, sequence_index: torch.Tensor,
                mask: torch.Tensor) -> int:
    """Write pair ``k`` into row ``r`` from column ``at``; returns the next free column."""
    prompt = list(e["prompt_ids"])
    body, lead = prompt[:-1], prompt[-1:]
    n = len(body)
    input_ids[r, at: at + n] = torch.tensor(body, dtype=torch.long)
    position_ids[r, at: at + n] = torch.arange(n)
    mask[r, 0, at: at + n, at: at + n] = torch.ones(n, n, dtype=torch.bool).tril()
    start = at + n
    for seq, completion in ((k, e["chosen_ids"]), (pairs + k, e["rejected_ids"])):
        tokens = lead + list(completion)
        m = len(tokens)
        span = slice(start, start + m)
        input_ids[r, span] = torch.tensor(tokens, dtype=torch.long)
        position_ids[r, span] = torch.arange(n, n + m)
        # Position i predicts token i + 1 of its branch; the last token predicts nothing scored.
        shift_labels[r, start: start + m - 1] = torch.tensor(tokens[1:], dtype=torch.long)
        sequence_index[r, start: start + m - 1] = seq
        mask[r, 0, span, at: at + n] = True  # the shared prompt body
        mask[r, 0, span, span] = torch.ones(m, m, dtype=torch.bool).tril()
        start += m
    return start
