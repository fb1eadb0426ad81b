"""Loss masks: assistant tokens only (from the template's generation markers, or by prefix rendering when a
template has none), completion only, and the dry-run rendering that shows them."""

from __future__ import annotations

from pathlib import Path

import pytest
from halo_schemas.training import DataSpec, SFTSpec
from halo_trainer_torch.core.components.data import load_training_data
from halo_trainer_torch.core.components.tokenize import IGNORE, PreferenceEncoder, SFTEncoder, has_generation_markers
from halo_trainer_torch.core.preview import preview_job
from halo_trainer_torch.core.recipes import sft as sft_recipe
from transformers import AutoTokenizer

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Cow?"},
        {"role": "assistant", "content": "Moo."}, {"role": "user", "content": "Dog?"},
        {"role": "assistant", "content": "Woof."}]


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path):  # noqa: ANN201
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _trained_text(tok, enc) -> str:  # noqa: ANN001
    return tok.decode([t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE])


def test_assistant_only_mask_from_generation_markers(tok) -> None:  # noqa: ANN001
    assert has_generation_markers(tok.chat_template)
    enc = SFTEncoder(tok, "messages", 512).encode({"messages": CONV})
    assert _trained_text(tok, enc) == "Moo.<|im_end|>Woof.<|im_end|>"
    assert len(enc.input_ids) == len(enc.labels) and not enc.truncated


def test_prefix_rendering_fallback_gives_the_same_mask(tok) -> None:  # noqa: ANN001
    plain = AutoTokenizer.from_pretrained(tok.name_or_path)
    plain.chat_template = plain.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert not has_generation_markers(plain.chat_template)
    with_markers = SFTEncoder(tok, "messages", 512).encode({"messages": CONV})
    fallback = SFTEncoder(plain, "messages", 512).encode({"messages": CONV})
    assert fallback.input_ids == with_markers.input_ids
    # The fallback also trains the newline the template prints after <|im_end|>: it belongs to the assistant turn.
    assert _trained_text(plain, fallback) == "Moo.<|im_end|>\nWoof.<|im_end|>\n"


def test_full_sequence_loss_and_truncation(tok) -> None:  # noqa: ANN001
    enc = SFTEncoder(tok, "messages", 10, completion_only=False).encode({"messages": CONV})
    assert enc.labels == enc.input_ids and len(enc.input_ids) == 10 and enc.truncated


def test_prompt_completion_and_text(tok) -> None:  # noqa: ANN001
    enc = SFTEncoder(tok, "prompt_completion", 512).encode({"prompt": "2 + 2 =", "completion": " 4"})
    assert _trained_text(tok, enc) == " 4<|im_end|>"
    enc = SFTEncoder(tok, "text", 512).encode({"text": "hello world"})
    assert enc.labels == enc.input_ids and tok.decode(enc.input_ids).endswith("<|im_end|>")
    conv = SFTEncoder(tok, "prompt_completion", 512).encode(
        {"prompt": [{"role": "user", "content": "Cow?"}], "completion": [{"role": "assistant", "content": "Moo."}]})
    assert _trained_text(tok, conv).startswith("Moo.<|im_end|>")


def test_preference_pairs_share_the_prompt(tok) -> None:  # noqa: ANN001
    rec = {"prompt": [{"role": "user", "content": "Cow?"}], "chosen": [{"role": "assistant", "content": "Moo."}],
           "rejected": [{"role": "assistant", "content": "Quack."}]}
    e = PreferenceEncoder(tok, 512).encode(rec)
    assert e is not None
    assert tok.decode(e.prompt_ids).endswith("<|im_start|>assistant\n")
    assert tok.decode(e.chosen_ids).startswith("Moo.") and tok.decode(e.rejected_ids).startswith("Quack.")
    assert PreferenceEncoder(tok, 5).encode(rec) is None  # the prompt alone fills max_length


def test_preview_shows_trained_and_masked_runs(sft_file: Path) -> None:
    result = preview_job("sft", {"model": "tiny://llama", "data": {"train": str(sft_file)}}, 2)
    assert result.ok and result.format == "messages" and result.records == 12
    first = result.samples[0]
    assert first.source == "sft.jsonl:1"
    trained = "".join(s.text for s in first.segments if s.trained)
    masked = "".join(s.text for s in first.segments if not s.trained)
    assert trained == "A cow says moo.<|im_end|>"
    assert "What does a cow say?" in masked
    assert first.num_trained_tokens == sum(s.num_tokens for s in first.segments if s.trained)


def test_preview_reports_problems_instead_of_failing(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"messages": [}\n')
    result = preview_job("sft", {"model": "tiny://llama", "data": {"train": str(tmp_path / "bad.jsonl")}})
    assert not result.ok and result.problems == ["bad.jsonl:1:15: invalid JSON: Expecting value"]


def test_preview_of_preference_data(pref_file: Path) -> None:
    result = preview_job("dpo", {"model": "tiny://llama", "data": {"train": str(pref_file)}})
    assert result.ok and [s.part for s in result.samples] == ["chosen", "rejected"]
    assert "".join(s.text for s in result.samples[1].segments if s.trained).startswith("No.")


def test_sft_encoding_drops_records_without_trained_tokens(tok, sft_file: Path) -> None:  # noqa: ANN001
    spec = SFTSpec(model="x", data=DataSpec(train=str(sft_file)), max_length=12)
    data = load_training_data(spec.data, "sft")
    rows, counts = sft_recipe.encode_records(sft_recipe.encoder(spec, tok, data.format), data.train)
    # 12 tokens never reach the assistant's answer: every record is dropped, and counted
    assert rows == [] and counts["dropped_records"] == 12
