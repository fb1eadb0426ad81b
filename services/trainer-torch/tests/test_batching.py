"""Packing: records in one row never see each other, and each keeps its own positions."""

from __future__ import annotations

from pathlib import Path

import torch
from halo_trainer_torch.core.components.batching import IGNORE, SFTCollator, build_sft_dataset
from transformers import AutoModelForCausalLM


def test_packed_rows_have_per_record_positions_and_masked_starts() -> None:
    batch = SFTCollator(pad_token_id=0)([
        {"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9], "seq_lengths": [3, 2]},
        {"input_ids": [10, 11], "labels": [IGNORE, 11], "seq_lengths": [2]},
    ])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9], [IGNORE, 11, IGNORE, IGNORE, IGNORE]]
    assert batch["input_ids"][1].tolist() == [10, 11, 0, 0, 0]
    assert int(batch["num_real_tokens"]) == 7 and "attention_mask" not in batch


def test_padded_mode_uses_an_attention_mask() -> None:
    batch = SFTCollator(pad_token_id=0, packed=False)([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]},
                                                       {"input_ids": [4], "labels": [4]}])
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2, 3], [4, IGNORE, IGNORE]]


def test_bfd_packing_fills_rows_without_splitting_records() -> None:
    rows = [{"input_ids": list(range(n)), "labels": list(range(n))} for n in (7, 5, 3, 3, 2)]
    ds = build_sft_dataset(rows, packing=True, max_length=10)
    lengths = sorted(sorted(r["seq_lengths"]) for r in ds)
    assert sum(sum(x) for x in lengths) == 20 and all(sum(x) <= 10 for x in lengths)
    assert sorted(n for x in lengths for n in x) == [2, 3, 3, 5, 7]


def test_packed_forward_equals_separate_forwards(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    a, b, c = list(range(10, 30)), list(range(40, 52)), list(range(60, 75))
    batch = SFTCollator(pad_token_id=0)([{"input_ids": a + b, "labels": a + b, "seq_lengths": [20, 12]},
                                          {"input_ids": c, "labels": c, "seq_lengths": [15]}])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = [model(input_ids=torch.tensor([s]), use_cache=False).logits[0] for s in (a, b, c)]
    torch.testing.assert_close(packed[0, :20], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[0, 20:32], alone[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[1, :15], alone[2], atol=1e-5, rtol=1e-5)
