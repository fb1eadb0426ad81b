"""Load a trained reward model as a learned verifier: ``score(prompt, completion) -> float``.

A reward-model run writes ``verifier.json`` into its export (``final/`` for full finetuning, ``adapter/``
for adapters)::

    verifier = RewardModelVerifier.load(run_dir / "final")
    verifier.score("Tell me about the moon.", "Sure, the moon is lovely.")         # raw reward
    verifier.score(prompt, completion, normalize=True)                               # z-score
    verifier.score([{"role": "user", "content": "..."}], "...")                      # chat prompt

Prompts and completions are rendered exactly as in training: with the chat template when the prompt is a
message list (or a plain string and the tokenizer has a template), otherwise as plain text + EOS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from halo_trainer_torch.core.components.tokenize import PreferenceEncoder


class RewardModelVerifier:
    """A reward model ready to score completions. Build with :meth:`load`."""

    def __init__(self, model: Any, tokenizer: Any, manifest: dict[str, Any], max_length: int = 4096) -> None:
        self.model, self.tokenizer, self.manifest = model.eval(), tokenizer, manifest
        self.encoder = PreferenceEncoder(tokenizer, max_length)
        stats = manifest.get("normalization") or {}
        self.mean = float(stats.get("mean", 0.0))
        self.std = float(stats.get("std", 1.0)) or 1.0

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> RewardModelVerifier:
        """Load from an export directory containing ``verifier.json``."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        manifest_path = path / "verifier.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{path} has no verifier.json: not a reward-model export")
        manifest = json.loads(manifest_path.read_text())
        tokenizer = AutoTokenizer.from_pretrained(path)
        if manifest.get("format") == "peft-seq-cls":
            from peft import AutoPeftModelForSequenceClassification

            model = AutoPeftModelForSequenceClassification.from_pretrained(path, num_labels=1)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model.to(device), tokenizer, manifest)

    def token_ids(self, prompt: str | list[dict[str, Any]], completion: str | list[dict[str, Any]]) -> list[int]:
        """The sequence the model scores (same rendering as training)."""
        if isinstance(prompt, str) and isinstance(completion, str) and getattr(self.tokenizer, "chat_template", None):
            prompt = [{"role": "user", "content": prompt}]
            completion = [{"role": "assistant", "content": completion}]
        pair = self.encoder.encode({"prompt": prompt, "chosen": completion, "rejected": completion})
        if pair is None:
            raise ValueError("the prompt alone fills the verifier's max_length")
        return pair.prompt_ids + pair.chosen_ids

    def score(self, prompt: str | list[dict[str, Any]], completion: str | list[dict[str, Any]],
              *, normalize: bool = False) -> float:
        import torch

        ids = torch.tensor([self.token_ids(prompt, completion)], device=next(self.model.parameters()).device)
        with torch.no_grad():
            reward = float(self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0])
        return (reward - self.mean) / self.std if normalize else reward
