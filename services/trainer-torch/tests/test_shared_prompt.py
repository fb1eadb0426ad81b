"""The shared-prompt layout for preference pairs: its shape, and log-probs equal to a padded batch's."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from halo_trainer_torch.core.components.batching import IGNORE, SharedPromptCollator
from halo_trainer_torch.core.components.preference import PreferenceTrainer, shared_prompt_unsupported
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments
from trl.trainer.dpo_trainer import DataCollatorForPreference


def test_a_pair_runs_its_prompt_once_and_branches_never_see_each_other() -> None:
    batch = SharedPromptCollator(pad_token_id=0, row_capacity=64)(
        [{"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]}])
    # prompt body [1, 2] | lead 3 + chosen [4, 5] | lead 3 + rejected [6]
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 3, 6]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3]]
    assert batch["shift_labels"].tolist() == [[IGNORE, IGNORE, 4, 5, IGNORE, 6, IGNORE]]
    assert batch["sequence_index"].tolist() == [[-1, -1, 0, 0, -1, 1, -1]]
    allowed = [[j for j, ok in enumerate(row) if ok] for row in batch["attention_mask"][0, 0].tolist()]
    assert allowed == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1, 5], [0, 1, 5, 6]]
    assert batch["num_pairs"] == 1 and int(batch["num_real_tokens"]) == 7


def test_pairs_pack_first_fit_decreasing_and_the_pad_tail_attends_only_to_itself() -> None:
    pairs = [{"prompt_ids": [1] * p, "chosen_ids": [2] * c, "rejected_ids": [3] * r}
             for p, c, r in ((4, 3, 2), (2, 1, 1), (6, 5, 5), (1, 1, 1))]
    batch = SharedPromptCollator(pad_token_id=0, row_capacity=21)(pairs)
    # lengths 10, 5, 17, 4 (body + two leads + completions): rows [17, 4] and [10, 5]
    assert batch["input_ids"].shape == (2, 21)
    assert int(batch["num_real_tokens"]) == 36
    index = batch["sequence_index"]
    assert sorted(set(index[index >= 0].tolist())) == list(range(8))  # chosen k, rejected 4 + k, all placed
    mask = batch["attention_mask"][1, 0]
    assert mask[15:, :].sum().item() == 6 and all(mask[j, j] for j in range(15, 21))


def test_an_empty_prompt_scores_what_a_padded_batch_scores() -> None:
    batch = SharedPromptCollator(pad_token_id=0, row_capacity=64)(
        [{"prompt_ids": [], "chosen_ids": [4, 5, 6], "rejected_ids": [7, 8]}])
    assert batch["input_ids"].tolist() == [[4, 5, 6, 7, 8]]
    assert batch["shift_labels"].tolist() == [[5, 6, IGNORE, 8, IGNORE]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]


def _pairs(n: int, vocab: int, seed: int = 0) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)

    def ids(lo: int, hi: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))]

    return [{"prompt_ids": ids(0 if i == 0 else 1, 12), "chosen_ids": ids(1, 10), "rejected_ids": ids(1, 10)}
            for i in range(n)]


def _trainer(model: Any, tok: Any, tmp_path: Path, share_prompt: bool) -> PreferenceTrainer:
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=4)
    from datasets import Dataset

    return PreferenceTrainer(model=model, args=args, train_dataset=Dataset.from_list(_pairs(4, 100)),
                             eval_dataset=None, tokenizer=tok, objective=lambda *a: None, reference="none",
                             share_prompt=share_prompt, max_length=64)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_qwen2_dir"])
def test_shared_prompt_log_probs_equal_a_padded_batch(fixture: str, attention: str, tmp_path: Path,
                                                      request: pytest.FixtureRequest) -> None:
    from peft import LoraConfig, get_peft_model

    path = request.getfixturevalue(fixture)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():  # a trained adapter: the policy differs from the base
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    shared = _trainer(model, tok, tmp_path / "s", share_prompt=True)
    padded = _trainer(model, tok, tmp_path / "p", share_prompt=False)
    assert shared.batch_layout == "shared_prompt" and padded.batch_layout == "padded"
    examples = _pairs(5, len(tok))
    model.eval()
    with torch.no_grad():
        got, got_len = shared._sequence_logps(model, SharedPromptCollator(tok.pad_token_id, 40)(examples))
        want, want_len = padded._sequence_logps(model, DataCollatorForPreference(pad_token_id=tok.pad_token_id)(examples))
    assert got_len.tolist() == want_len.tolist()
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (got, want)
    # and the gradients of a loss on them
    model.train()
    for layout, trainer, collate in ((got, shared, SharedPromptCollator(tok.pad_token_id, 40)),
                                     (want, padded, DataCollatorForPreference(pad_token_id=tok.pad_token_id))):
        model.zero_grad()
        logps, _ = trainer._sequence_logps(model, collate(examples))
        logps.sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        if layout is got:
            shared_grads = grads
    for a, b in zip(shared_grads, grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)


def test_models_without_a_custom_mask_fall_back_to_padded_batches() -> None:
    ok = SimpleNamespace(_attn_implementation="sdpa")
    assert shared_prompt_unsupported(ok, 512) is None
    assert "flash_attention_2" in shared_prompt_unsupported(SimpleNamespace(_attn_implementation="flash_attention_2"), 512)
    windowed = SimpleNamespace(_attn_implementation="sdpa", sliding_window=256, use_sliding_window=True)
    assert "sliding window" in shared_prompt_unsupported(windowed, 512)
    assert shared_prompt_unsupported(windowed, 128) is None  # no sequence is longer than the window
    off = SimpleNamespace(_attn_implementation="sdpa", sliding_window=256, use_sliding_window=False)
    assert shared_prompt_unsupported(off, 512) is None
    mixed = SimpleNamespace(_attn_implementation="sdpa", layer_types=["full_attention", "sliding_attention"])
    assert "layer types" in shared_prompt_unsupported(mixed, 512)
