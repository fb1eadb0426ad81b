"""Tests for the tiny-model kit: tokenizer, chat template, models, determinism, caching."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from halo_models import tiny
from halo_models.tiny import (
    EOS_TOKEN_ID,
    IM_START_ID,
    MANIFEST_NAME,
    PAD_TOKEN_ID,
    TinySpec,
    build_model,
    build_tokenizer,
    make_tiny,
    make_tiny_cached,
)
from pydantic import ValidationError
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And in words, with a def?"},
    {"role": "assistant", "content": ' Four.\ndef four():\n    return {"n": 4}'},
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


# --- tokenizer -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "def f(x: int) -> int:\n\treturn x ** 2  # square\n",
        '{"id": "run-01", "score": 0.93, "tags": ["a", "b"]}',
        "int main(void) { return 0; }",
        "Unicode: café, naïve, Zoë, 日本語, emoji 🚀 and\r\nCRLF   spaces  .",
        "",
    ],
)
def test_tokenizer_round_trips_any_text(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert all(0 <= i < len(tokenizer) for i in ids)
    assert tokenizer.decode(ids) == text


def test_tokenizer_has_chatml_specials(tokenizer: PreTrainedTokenizerBase) -> None:
    assert len(tokenizer) == 512
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == PAD_TOKEN_ID
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == EOS_TOKEN_ID
    assert tokenizer.bos_token is None
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") == IM_START_ID
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert special in tokenizer.all_special_tokens
        # A special token in text must be one id, not spelled out in bytes.
        assert len(tokenizer.encode(special, add_special_tokens=False)) == 1
    # No BOS/EOS is added behind the caller's back: chat templates own the structure.
    assert tokenizer.encode("hi") == tokenizer.encode("hi", add_special_tokens=False)


def test_tokenizer_compresses_shipped_kinds_of_text(tokenizer: PreTrainedTokenizerBase) -> None:
    # A trained BPE, not a byte tokenizer: common words take fewer tokens than bytes.
    text = "The model reads the dataset and the tokenizer writes the answer."
    assert len(tokenizer.encode(text)) < len(text.encode()) / 2


def test_build_tokenizer_is_deterministic_and_sized(tmp_path: Path) -> None:
    a = build_tokenizer(tmp_path / "a", vocab_size=300)
    build_tokenizer(tmp_path / "b", vocab_size=300)
    assert len(a) == 300
    assert sha256(tmp_path / "a" / "tokenizer.json") == sha256(tmp_path / "b" / "tokenizer.json")
    with pytest.raises(ValueError, match="supports at most"):
        build_tokenizer(vocab_size=100_000)
    with pytest.raises(ValueError, match="at least"):
        build_tokenizer(vocab_size=100)


def test_shipped_corpus_matches_its_generator() -> None:
    script = PACKAGE_ROOT / "scripts" / "make_corpus.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert tiny.corpus_path().stat().st_size < 200_000


# --- chat template ---------------------------------------------------------------------------


def test_chat_template_renders_chatml(tokenizer: PreTrainedTokenizerBase) -> None:
    text = tokenizer.apply_chat_template(CONVERSATION[:3], tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")
    no_prompt = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=False)
    assert not no_prompt.endswith("assistant\n")


def test_assistant_mask_marks_exactly_assistant_content_and_im_end(tokenizer: PreTrainedTokenizerBase) -> None:
    out = tokenizer.apply_chat_template(CONVERSATION, return_assistant_tokens_mask=True, return_dict=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)

    # Split the mask into contiguous runs of 1s: one per assistant turn.
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(mask):
        if m and (i == 0 or not mask[i - 1]):
            spans.append((i, i))
        if m:
            spans[-1] = (spans[-1][0], i + 1)
    replies = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    assert len(spans) == len(replies)
    for (start, end), reply in zip(spans, replies, strict=True):
        assert tokenizer.decode(ids[start:end]) == reply + "<|im_end|>"
        assert ids[end - 1] == EOS_TOKEN_ID
        assert tokenizer.decode(ids[:start]).endswith("<|im_start|>assistant\n")
        assert tokenizer.decode(ids[end:]).startswith("\n")


def test_assistant_mask_batched_tensors(tokenizer: PreTrainedTokenizerBase) -> None:
    convs = [CONVERSATION[:3], CONVERSATION]
    out = tokenizer.apply_chat_template(
        convs, return_assistant_tokens_mask=True, return_dict=True, padding=True, return_tensors="pt"
    )
    assert out["assistant_masks"].shape == out["input_ids"].shape
    # Padding is never marked as assistant content.
    assert not out["assistant_masks"][out["attention_mask"] == 0].any()
    assert int(out["assistant_masks"][0].sum()) == len(tokenizer.encode("4<|im_end|>"))


# --- models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_qwen2_dir"])
def test_causal_lm_forward_and_generate(fixture: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(fixture)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    expected = {"tiny_model_dir": "LlamaForCausalLM", "tiny_qwen2_dir": "Qwen2ForCausalLM"}[fixture]
    assert type(model).__name__ == expected
    assert model.config.vocab_size == len(tok)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id

    batch = tok(["hello world", "a longer line of text here"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (2, batch["input_ids"].shape[1], len(tok))
    # Random init: loss close to uniform cross-entropy ln(512) = 6.24.
    assert 5.5 < out.loss.item() < 7.0

    prompt = tok.apply_chat_template(
        CONVERSATION[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    gen = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] <= prompt["input_ids"].shape[1] + 4


def test_seq_cls_scores_with_padding(tiny_seq_cls_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_seq_cls_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_seq_cls_dir)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.config.num_labels == 1
    assert model.config.pad_token_id == tok.pad_token_id

    texts = ["short", "a much longer sequence that needs no padding"]
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        batched = model(**batch).logits
        alone = model(**tok(texts[:1], return_tensors="pt")).logits
    assert batched.shape == (2, 1)
    # pad_token_id lets the head pick the last real token, so padding does not change the score.
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)


def test_qwen2_seq_cls(tmp_path: Path) -> None:
    path = make_tiny(tmp_path / "rm", arch="qwen2", seq_cls=True)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    assert type(model).__name__ == "Qwen2ForSequenceClassification"
    assert not (path / "generation_config.json").exists()
    with torch.no_grad():
        assert model(torch.tensor([[5, 6, 7]])).logits.shape == (1, 1)


def test_same_seed_gives_identical_files_other_seed_differs(tmp_path: Path) -> None:
    a = make_tiny(tmp_path / "a", arch="qwen2")
    b = make_tiny(tmp_path / "b", arch="qwen2")
    c = make_tiny(tmp_path / "c", arch="qwen2", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert sha256(a / name) == sha256(b / name), name
    assert sha256(a / "model.safetensors") != sha256(c / "model.safetensors")


def test_build_does_not_disturb_global_rng(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_tiny(tmp_path / "m")
    torch.testing.assert_close(torch.rand(3), expected)


def test_build_model_with_explicit_tokenizer(tmp_path: Path) -> None:
    tok = build_tokenizer(vocab_size=320)
    path = build_model(tmp_path / "m", hidden_size=32, heads=2, kv_heads=1, intermediate=64, tokenizer=tok)
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    assert manifest["spec"]["vocab_size"] == 320
    assert manifest["spec"]["hidden_size"] == 32
    assert AutoModelForCausalLM.from_pretrained(path).config.vocab_size == 320


def test_manifest_records_spec_and_parameter_count(tiny_model_dir: Path) -> None:
    manifest = json.loads((tiny_model_dir / MANIFEST_NAME).read_text())
    assert manifest["kit_version"] == tiny.KIT_VERSION
    assert TinySpec(**manifest["spec"]) == TinySpec.preset("tiny")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert manifest["num_parameters"] == model.num_parameters() == TinySpec.preset("tiny").num_parameters()


def test_size_presets() -> None:
    assert 100_000 < TinySpec.preset("tiny").num_parameters() < 1_000_000
    assert 20_000_000 < TinySpec.preset("small").num_parameters() < 30_000_000
    with pytest.raises(ValueError, match="unknown size"):
        TinySpec.preset("huge")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"hidden_size": 60, "heads": 8}, "must divide hidden_size"),
        ({"heads": 4, "kv_heads": 3}, "must divide heads"),
        ({"hidden_size": 60, "heads": 4, "kv_heads": 1}, "must be even"),
        ({"arch": "gpt2"}, "arch"),
        ({"hidden": 64}, "hidden"),  # typo of hidden_size: extra="forbid" names it
    ],
)
def test_spec_rejects_bad_shapes(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        TinySpec.preset("tiny", **overrides)


def test_loads_with_hub_offline(tiny_model_dir: Path) -> None:
    # A fresh interpreter, so HF_HUB_OFFLINE is read at import time as in real use.
    code = (
        "import sys; from transformers import AutoModelForCausalLM, AutoTokenizer;"
        "t = AutoTokenizer.from_pretrained(sys.argv[1]); m = AutoModelForCausalLM.from_pretrained(sys.argv[1]);"
        "print(len(t), m.config.model_type)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tiny_model_dir.parent / ".no-hf-home")}
    result = subprocess.run(
        [sys.executable, "-c", code, str(tiny_model_dir)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["512", "llama"]


def test_a_few_optimizer_steps_reduce_loss(tiny_model_dir: Path) -> None:
    """The random model is trainable: fitting one repeated sentence drives the loss down."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.train()
    batch = tok(["The quick brown fox jumps over the lazy dog."] * 4, return_tensors="pt")
    before = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
    assert not torch.equal(before, model.model.layers[0].mlp.down_proj.weight)


# --- make_tiny / make_tiny_cached -------------------------------------------------------------


def test_make_tiny_refuses_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        make_tiny(tmp_path)
    make_tiny(tmp_path, overwrite=True)
    assert (tmp_path / "precious.txt").exists() and (tmp_path / "model.safetensors").exists()


def test_make_tiny_cached_reuses_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_tiny_cached(tmp_path, arch="llama", hidden_size=32, heads=2, kv_heads=1)
    assert (first / MANIFEST_NAME).is_file()

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached build must not be rebuilt")

    monkeypatch.setattr(tiny, "_build", no_build)
    assert make_tiny_cached(tmp_path, arch="llama", hidden_size=32, heads=2, kv_heads=1) == first
    monkeypatch.undo()

    other = make_tiny_cached(tmp_path, arch="llama", hidden_size=32, heads=2, kv_heads=1, seed=7)
    assert other != first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])  # no temp leftovers


def test_make_tiny_cached_under_concurrency(tmp_path: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(make_tiny_cached(tmp_path, arch="qwen2", hidden_size=32, heads=2, kv_heads=1))
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(set(results)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name]
    AutoModelForCausalLM.from_pretrained(results[0])


def test_cache_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALO_TINY_CACHE", str(tmp_path / "c"))
    assert tiny.default_cache_root() == tmp_path / "c"
    monkeypatch.delenv("HALO_TINY_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tiny.default_cache_root() == tmp_path / "xdg" / "halo-forge" / "tiny"


def test_cache_key_tracks_spec_and_kit_version(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = TinySpec.preset("tiny")
    assert spec.cache_key() == TinySpec.preset("tiny").cache_key()
    assert spec.cache_key() != TinySpec.preset("tiny", seq_cls=True).cache_key()
    key = spec.cache_key()
    monkeypatch.setattr(tiny, "KIT_VERSION", "999")
    assert spec.cache_key() != key
