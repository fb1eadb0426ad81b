"""reward_model: a learned reward — a reward-model run trained here (``method: rm``) scores completions.

Spec::

    {"name": "reward_model", "params": {"run": "run:run-01J...", "temperature": 1.0}}

The run's export (``final/`` for full finetuning, ``adapter/`` for a PEFT adapter) carries ``verifier.json``
(written by trainer-torch and trainer-mlx): the format and the reward mean/std measured on held-out pairs (or
training pairs when the run had no eval data). A completion is rendered exactly as in training (the chat
template with ``context.prompt`` as the user turn, or plain ``prompt + completion + EOS``), the head's logit is
the raw reward, and the reward this verifier returns is ``sigmoid((raw - mean) / std / temperature)``: 0.5 at
the held-out mean, a monotone map into [0, 1] that GRPO, RAFT, ``data synthesize`` and ``data score`` use like
any other verifier. ``details`` carry ``raw``, ``z`` and the statistics used.

The model runs **in the verifier process, not in the sandbox**: it is the weights of a run trained on this
host (safetensors, no code), loaded with ``trust_remote_code=False``. A run whose model needs code shipped with
it (``auto_map`` in its config) is refused when the run came from an imported bundle (whatever
``HALO_ALLOW_REMOTE_CODE`` says), and for a run trained here it is loaded with remote code only when that run
was trained with ``trust_remote_code`` and the host allows it (``HALO_ALLOW_REMOTE_CODE=1``).
Only ``run:<id>`` is accepted — never a path — so a spec cannot make the service load arbitrary files.

Loaded models are kept (a small LRU per export and device); scoring is serialised per model.
"""

from __future__ import annotations

import importlib.util
import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from halo_common.errors import BadRequest, Forbidden, NotFound
from halo_common.paths import HaloPaths, is_imported
from halo_schemas.verifiers import VerifyContext, VerifyResult, VerifyStage
from pydantic import Field

from halo_verifiers.base import Availability, Runtime, Verifier, VerifierParams
from halo_verifiers.registry import register_verifier

REMOTE_CODE_SETTING = "HALO_ALLOW_REMOTE_CODE"
INSTALL_HINT = "pip install torch transformers peft halo-training (the reward model is scored in this process)"
MAX_LOADED = 2


class RewardModelParams(VerifierParams):
    run: str = Field(pattern=r"^run:[A-Za-z0-9_-]+$", description="The reward-model run to score with: 'run:<id>' "
                     "(HALO_HOME/runs/<id>, trained here with method 'rm' or imported from a bundle).")
    temperature: float = Field(default=1.0, gt=0, le=100, description="reward = sigmoid(z / temperature), z the "
                               "raw reward normalised by the run's held-out mean and std.")
    success_threshold: float = Field(default=0.5, ge=0, le=1, description="success when reward >= this "
                                     "(0.5 = above the held-out mean).")
    max_length: int = Field(default=4096, ge=16, le=131072, description="Tokens scored (prompt + completion); the "
                            "completion is truncated to fit, as in training.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(default="auto", description="Where the model runs "
                                                          "(auto: CUDA/ROCm, then MPS, then CPU).")


@dataclass(frozen=True)
class RewardModelExport:
    """A run's reward-model export, checked: where it is, its manifest, and whether it may run code."""

    run_id: str
    path: Path
    manifest: dict[str, Any]
    imported: bool
    trust_remote_code: bool

    @property
    def mean(self) -> float:
        return float((self.manifest.get("normalization") or {}).get("mean", 0.0))

    @property
    def std(self) -> float:
        std = float((self.manifest.get("normalization") or {}).get("std", 1.0))
        return std if std > 0 and math.isfinite(std) else 1.0


def _needs_remote_code(export: Path, manifest: dict[str, Any]) -> bool:
    """True when the model (or, for an adapter, its base) or the tokenizer names code to import (``auto_map``)."""
    configs = [export / "config.json", export / "tokenizer_config.json"]
    adapter = export / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path") or manifest.get("base_model")
        if base and Path(base).is_dir():
            configs.append(Path(base) / "config.json")
    for cfg in configs:
        if cfg.is_file():
            try:
                if json.loads(cfg.read_text()).get("auto_map"):
                    return True
            except ValueError:
                continue
    return False


def resolve_run(ref: str, paths: HaloPaths, allow_remote_code: bool) -> RewardModelExport:
    """``run:<id>`` -> its checked reward-model export. Raises NotFound (no run, no ``verifier.json``),
    BadRequest (not a reward model) or Forbidden (the model needs remote code and may not run it here)."""
    run_id = ref.removeprefix("run:")
    run_dir = paths.run_dir(run_id)
    if not run_dir.is_dir():
        raise NotFound(f"run {run_id} not found under {paths.runs_dir}", param="params.run")
    export = next((run_dir / d for d in ("final", "adapter") if (run_dir / d / "verifier.json").is_file()), None)
    if export is None:
        raise NotFound(f"run {run_id} has no reward-model export (final/ or adapter/ with verifier.json): train it "
                       "with method 'rm'", param="params.run")
    try:
        manifest = json.loads((export / "verifier.json").read_text())
    except ValueError as exc:
        raise BadRequest(f"run {run_id}: {export / 'verifier.json'} is not JSON: {exc}", param="params.run") from None
    if manifest.get("kind") != "reward-model" or manifest.get("format") not in ("hf-seq-cls", "peft-seq-cls"):
        raise BadRequest(f"run {run_id}: verifier.json is not a reward model this verifier can load "
                         f"(kind={manifest.get('kind')!r}, format={manifest.get('format')!r})", param="params.run")
    imported = is_imported(export, paths)
    trust = False
    if _needs_remote_code(export, manifest):
        if imported:
            raise Forbidden(f"run {run_id} came from an imported bundle and its model needs code shipped with it "
                            f"(auto_map): refused whatever {REMOTE_CODE_SETTING} says", param="params.run")
        try:
            trained_with = bool(json.loads((run_dir / "spec.json").read_text()).get("trust_remote_code"))
        except (OSError, ValueError):
            trained_with = False
        if not (trained_with and allow_remote_code):
            raise Forbidden(f"run {run_id}'s model needs code shipped with it (auto_map): loaded only when the run "
                            f"was trained with trust_remote_code and the host sets {REMOTE_CODE_SETTING}=1",
                            param="params.run")
        trust = True
    return RewardModelExport(run_id, export, manifest, imported, trust)


class LoadedRewardModel:
    """Model + tokenizer of an export on one device, scoring one sequence at a time under a lock."""

    def __init__(self, export: RewardModelExport, device: str) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        trust = export.trust_remote_code
        self.tokenizer = AutoTokenizer.from_pretrained(export.path, trust_remote_code=trust)
        if export.manifest.get("format") == "peft-seq-cls":
            from peft import AutoPeftModelForSequenceClassification

            model = AutoPeftModelForSequenceClassification.from_pretrained(export.path, num_labels=1,
                                                                           trust_remote_code=trust)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(export.path, num_labels=1,
                                                                       trust_remote_code=trust)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.to(device).eval()
        self.device = device
        self.lock = threading.Lock()

    def token_ids(self, prompt: str, completion: str, max_length: int) -> list[int]:
        """The sequence training scored: halo_training's PreferenceEncoder on a chosen == rejected pair."""
        from halo_training.tokenize import PreferenceEncoder

        record: dict[str, Any] = {"prompt": prompt, "chosen": completion, "rejected": completion}
        if getattr(self.tokenizer, "chat_template", None):
            record = {"prompt": [{"role": "user", "content": prompt}],
                      "chosen": [{"role": "assistant", "content": completion}],
                      "rejected": [{"role": "assistant", "content": completion}]}
        pair = PreferenceEncoder(self.tokenizer, max_length).encode(record)
        if pair is None:
            raise ValueError(f"the prompt alone fills max_length={max_length}")
        return pair.prompt_ids + pair.chosen_ids

    def score(self, ids: list[int]) -> float:
        import torch

        with self.lock, torch.no_grad():
            t = torch.tensor([ids], device=self.device)
            return float(self.model(input_ids=t, attention_mask=torch.ones_like(t)).logits[0, 0].float())


_loaded: OrderedDict[tuple[str, float, str], LoadedRewardModel] = OrderedDict()
_loaded_lock = threading.Lock()


def _device(choice: str) -> str:
    if choice != "auto":
        return choice
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load(export: RewardModelExport, device: str) -> LoadedRewardModel:
    """The loaded model for ``export`` on ``device`` (loaded once; the ``MAX_LOADED`` most recent are kept)."""
    key = (str(export.path), (export.path / "verifier.json").stat().st_mtime, device)
    with _loaded_lock:  # one load at a time: a batch's first items would otherwise each load the model
        hit = _loaded.get(key)
        if hit is not None:
            _loaded.move_to_end(key)
            return hit
        model = LoadedRewardModel(export, device)
        _loaded[key] = model
        while len(_loaded) > MAX_LOADED:
            _loaded.popitem(last=False)
        return model


@register_verifier("reward_model", aliases=("rm",), origin="builtin")
class RewardModelVerifier(Verifier):
    """Learned reward from a reward-model run trained here (run:<id>), normalised by its held-out statistics."""

    Params = RewardModelParams
    params: RewardModelParams
    kind = "judge"
    python_modules = ("torch", "transformers", "halo_training")
    install_hint = INSTALL_HINT

    def __init__(self, params: VerifierParams, runtime: Runtime) -> None:
        super().__init__(params, runtime)
        # Resolved when the spec is prepared: an unknown run or a refused model is an error before any work.
        self.export = resolve_run(self.params.run, runtime.paths or HaloPaths.from_env(), runtime.allow_remote_code)

    def availability(self, context: VerifyContext | None = None) -> Availability:
        av = super().availability(context)  # torch, transformers, halo_training (python_modules)
        if av.ok and self.export.manifest.get("format") == "peft-seq-cls" and importlib.util.find_spec("peft") is None:
            return Availability(False, "peft not installed (the run exported an adapter)", INSTALL_HINT)
        return av

    def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
        p = self.params
        if not context.prompt:
            return self.missing_context("prompt", "the reward model scores a completion of a prompt")
        try:
            model = load(self.export, _device(p.device))
        except (OSError, ValueError, ImportError, RuntimeError) as exc:  # e.g. an adapter whose base model is gone
            return self.error_result("reward_model_load_failed",
                                     f"run {self.export.run_id}: {type(exc).__name__}: {exc}"[:1000])
        try:
            ids = model.token_ids(context.prompt, completion, p.max_length)
        except ValueError as exc:
            return self.error_result("prompt_too_long", str(exc))
        raw = model.score(ids)
        z = (raw - self.export.mean) / self.export.std
        reward = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z / p.temperature))))
        norm = self.export.manifest.get("normalization") or {}
        return self.result(reward, VerifyStage.SCORED, success=reward >= p.success_threshold, details={
            "raw": raw, "z": z, "mean": self.export.mean, "std": self.export.std, "run": self.export.run_id,
            "stats_from": "held-out pairs" if norm.get("held_out") else "training pairs",
            "pairwise_accuracy": norm.get("pairwise_accuracy"), "tokens": len(ids)})

