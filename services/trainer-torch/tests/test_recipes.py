"""Recipes on the tiny model: they learn, their exports are standard and exact, and they stop, resume and
refuse bad input the way the job contract says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from halo_common.backend import capabilities, detect_backend
from halo_schemas.jobs import JobState
from halo_trainer_torch.core.components.hooks import JobControl, Reporter
from halo_trainer_torch.core.components.reward_verifier import RewardModelVerifier
from halo_trainer_torch.core.components.rundir import RunDir
from halo_trainer_torch.core.runner import Preempted, run_job
from transformers import AutoModelForCausalLM, AutoTokenizer

from .conftest import ANIMALS, HELD_OUT, write_jsonl

PROBE = "<|im_start|>user\nWhat does a cow say?<|im_end|>\n<|im_start|>assistant\nA cow says"


def _spec(data_file: Path, **kw: Any) -> dict[str, Any]:
    # float32: the equivalence checks below are exact to ~1e-5, which bf16 autocast (the default on CPUs with
    # native bf16) is not.
    base = {"model": "tiny://llama", "data": {"train": str(data_file)}, "batch_size": 4, "max_length": 128,
            "checkpoint_every_steps": 1000, "warmup_ratio": 0.0, "lr_scheduler": "constant", "dtype": "float32"}
    return {**base, **kw}


def _logits(model_dir: Path | str, adapter: Path | None = None) -> torch.Tensor:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    ids = torch.tensor([tok(PROBE)["input_ids"]])
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits[0]


@pytest.mark.filterwarnings("ignore:PiSSA changes the base weights")  # we do convert it (see the export)
@pytest.mark.parametrize("finetune", ["full", "lora", "dora", "rslora", "pissa"])
def test_sft_learns_and_exports_exactly(finetune: str, sft_file: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
    lr = {"full": 3e-3, "lora": 1e-2, "dora": 1e-2}.get(finetune, 3e-3)  # rsLoRA scales by alpha/sqrt(r): gentler
    merge = finetune != "full"
    s = run_job("sft", _spec(sft_file, finetune=finetune, max_steps=30, learning_rate=lr, merge_adapter=merge),
                tmp_path / "run")
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    assert s.steps == 30 and s.weights_updated
    # A random 2-layer model: full finetuning memorises the answers, adapters (1/5 of the weights) learn slower.
    assert s.loss_last < (0.5 if finetune == "full" else 0.9) * s.loss_first, (s.loss_first, s.loss_last)
    base = _logits(tiny_model_dir)
    if finetune == "full":
        assert s.trainable_parameters == s.total_parameters
        assert not torch.allclose(_logits(s.outputs["final"]), base, atol=1e-3)
        return
    assert 0 < s.trainable_parameters < s.total_parameters  # type: ignore[operator]
    adapter = Path(s.outputs["adapter"])
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["use_dora"] == (finetune == "dora") and cfg["use_rslora"] == (finetune == "rslora")
    unmerged = _logits(tiny_model_dir, adapter)  # the ORIGINAL base + the adapter (PiSSA: converted to LoRA)
    assert not torch.allclose(unmerged, base, atol=1e-3)  # the trainable parameters changed the model
    merged = _logits(s.outputs["final"])
    torch.testing.assert_close(merged, unmerged, atol=2e-5, rtol=2e-5)


def test_grad_accumulation_4x2_matches_batch_8(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": f"What does the {a} say, number {i}?"},
                          {"role": "assistant", "content": f"{s} " * (1 + i % 4)}]}
            for i, (a, s) in enumerate(ANIMALS + ANIMALS[:4])]  # 16 records of varied length
    data = write_jsonl(tmp_path / "ga.jsonl", rows)
    common = {"finetune": "full", "max_steps": 4, "learning_rate": 2e-3, "packing": False}
    big = run_job("sft", _spec(data, batch_size=8, grad_accum=1, **common), tmp_path / "b8")
    acc = run_job("sft", _spec(data, batch_size=2, grad_accum=4, **common), tmp_path / "b2x4")
    curve = [r["loss"] for r in RunDir(tmp_path / "b8").read_metrics() if "loss" in r]
    curve_acc = [r["loss"] for r in RunDir(tmp_path / "b2x4").read_metrics() if "loss" in r]
    assert len(curve) == len(curve_acc) == 4
    assert curve == pytest.approx(curve_acc, rel=1e-4)
    assert curve[-1] < curve[0]
    assert big.tokens == acc.tokens


DPO_VARIANTS = [{"loss_type": t} for t in ("sigmoid", "ipo", "hinge", "kto_pair", "rpo")] + [
    {"loss_type": "cdpo", "label_smoothing": 0.1}, {"loss_type": "sigmoid", "reference_free": True}]


@pytest.mark.parametrize("variant", DPO_VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_dpo_variant_raises_reward_accuracy(variant: dict[str, Any], twin_pref_file: Path, tmp_path: Path) -> None:
    s = run_job("dpo", _spec(twin_pref_file, finetune="lora", max_steps=12, learning_rate=1e-2, batch_size=8, **variant),
                tmp_path / "run")
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    rows = [r for r in RunDir(tmp_path / "run").read_metrics() if "reward_accuracy" in r]
    first, last = rows[0]["reward_accuracy"], rows[-1]["reward_accuracy"]
    if not variant.get("reference_free"):
        assert first == 0.0  # policy == reference before the first update: every reward is 0
    assert last >= 0.99 and last > first, (first, last)
    assert rows[-1]["reward_margin"] > rows[0]["reward_margin"]
    assert s.extras["reference"] == ("none" if variant.get("reference_free") else "adapter")


def test_dpo_full_finetune_uses_a_frozen_reference_copy(pref_file: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
    s = run_job("dpo", _spec(pref_file, finetune="full", max_steps=6, learning_rate=1e-3, batch_size=8), tmp_path / "r")
    assert s.state == JobState.SUCCEEDED and s.extras["reference"] == "model"
    rows = [r for r in RunDir(tmp_path / "r").read_metrics() if "reward_accuracy" in r]
    assert rows[0]["reward_accuracy"] == 0.0 and rows[-1]["reward_accuracy"] >= 0.99


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_precomputed_reference_log_probs_train_the_same_run(finetune: str, pref_file: Path, tmp_path: Path) -> None:
    """precompute_ref_log_probs moves the reference pass before training (adapter-off base for LoRA, the frozen
    copy for full finetuning, released afterwards); every logged step matches the per-step reference's run."""
    rows = {}
    for precompute in (False, True):
        run = tmp_path / f"r{int(precompute)}"
        spec = _spec(pref_file, finetune=finetune, max_steps=6, epochs=2, learning_rate=1e-3, batch_size=4,
                     precompute_ref_log_probs=precompute, eval_every_steps=3)
        spec["data"]["eval_fraction"] = 0.25  # the eval split gets its reference log-probs too
        s = run_job("dpo", spec, run)
        assert s.state == JobState.SUCCEEDED, s.failure_reason
        metrics = RunDir(run).read_metrics()
        rows[precompute] = [(r["step"], r["loss"], r["reward_chosen"], r["reward_rejected"])
                            for r in metrics if "reward_chosen" in r]
        rows[precompute] += [(r["step"], r["eval_loss"], r["eval_reward_chosen"], r["eval_reward_rejected"])
                             for r in metrics if "eval_reward_chosen" in r]
    assert len(rows[True]) == len(rows[False]) >= 6 + 2  # 6 steps, evaluations at 3 and 6 (and the final one)
    for a, b in zip(rows[True], rows[False], strict=True):
        assert a[0] == b[0] and a[1:] == pytest.approx(b[1:], rel=1e-4, abs=1e-6)


def test_precomputing_needs_a_reference() -> None:
    from halo_schemas.training import DPOSpec
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="precompute_ref_log_probs needs a reference"):
        DPOSpec.model_validate({"model": "m", "data": {"train": "d.jsonl"}, "reference_free": True,
                                "precompute_ref_log_probs": True})


def test_orpo_separates_chosen_from_rejected(pref_file: Path, tmp_path: Path) -> None:
    s = run_job("orpo", _spec(pref_file, finetune="lora", max_steps=12, learning_rate=1e-2, batch_size=8, beta=0.5),
                tmp_path / "run")
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    rows = [r for r in RunDir(tmp_path / "run").read_metrics() if "log_odds_ratio" in r]
    assert rows[-1]["log_odds_ratio"] > rows[0]["log_odds_ratio"]
    assert rows[-1]["nll"] < rows[0]["nll"]
    assert rows[-1]["reward_accuracy"] >= 0.99
    assert s.loss_last < s.loss_first


def test_reward_model_generalises_to_held_out_pairs(pref_file: Path, heldout_pref_file: Path, tmp_path: Path) -> None:
    spec = _spec(pref_file, finetune="full", max_steps=30, learning_rate=3e-3, batch_size=8,
                 data={"train": str(pref_file), "eval": str(heldout_pref_file)}, checkpoint_every_steps=15)
    s = run_job("rm", spec, tmp_path / "run")
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    assert s.extras["heldout_pairwise_accuracy"] >= 0.9
    assert s.extras["eval_accuracy"] >= 0.9
    verifier = RewardModelVerifier.load(s.outputs["final"])
    good = verifier.score(f"Tell me about the {HELD_OUT[0]}.", f"Sure, the {HELD_OUT[0]} is lovely.")
    bad = verifier.score(f"Tell me about the {HELD_OUT[0]}.", "No.")
    assert good > bad
    assert verifier.manifest["kind"] == "reward-model" and verifier.manifest["format"] == "hf-seq-cls"


class _StopAt(Reporter):
    def __init__(self, control: JobControl, step: int, how: str) -> None:
        self.control, self.step, self.how = control, step, how

    def progress(self, step: int, total_steps: int | None, metrics: dict[str, float]) -> None:
        if step >= self.step:
            getattr(self.control, self.how)()


def test_cancel_stops_after_the_current_step(sft_file: Path, tmp_path: Path) -> None:
    control = JobControl()
    s = run_job("sft", _spec(sft_file, max_steps=30, progress_interval_s=0), tmp_path / "run", control=control,
                reporter=_StopAt(control, 3, "cancel"))
    assert s.state == JobState.CANCELLED and s.failure_reason == "cancelled by request"
    assert 3 <= s.steps < 30 and s.weights_updated
    assert not (tmp_path / "run" / "adapter").exists()
    assert json.loads((tmp_path / "run" / "training_summary.json").read_text())["state"] == "cancelled"


def test_preempted_run_resumes_to_the_same_curve(sft_file: Path, tmp_path: Path) -> None:
    spec = _spec(sft_file, max_steps=10, checkpoint_every_steps=4, progress_interval_s=0, finetune="lora",
                 learning_rate=1e-2, lr_scheduler="cosine")
    straight = run_job("sft", spec, tmp_path / "straight")
    control = JobControl()
    with pytest.raises(Preempted):
        run_job("sft", spec, tmp_path / "resumed", control=control, reporter=_StopAt(control, 5, "preempt"))
    run = RunDir(tmp_path / "resumed")
    stopped_at = run.checkpoint_steps()[-1]
    assert 5 <= stopped_at < 10  # the preemption wrote a checkpoint at the step it stopped
    resumed = run_job("sft", spec, tmp_path / "resumed", attempt=2)
    assert resumed.state == JobState.SUCCEEDED and resumed.steps == 10
    assert resumed.resumed_from_step == stopped_at and resumed.attempts == 2
    steps = [r["step"] for r in run.read_metrics() if "loss" in r]
    assert steps == list(range(1, 11))  # every step once: no gap, no duplicate
    a = [r["loss"] for r in RunDir(tmp_path / "straight").read_metrics() if "loss" in r]
    b = [r["loss"] for r in run.read_metrics() if "loss" in r]
    assert b == pytest.approx(a, rel=1e-5)  # optimizer, scheduler, RNG and data order all restored
    assert resumed.tokens == straight.tokens


def _assert_stopped_before_training(run_dir: Path) -> None:
    run = RunDir(run_dir)
    assert run.checkpoint_steps() == [] and not run.metrics_jsonl.exists()
    assert not (run_dir / "adapter").exists() and not (run_dir / "replay.json").exists()


def test_malformed_line_stops_before_training(sft_file: Path, tmp_path: Path) -> None:
    lines = sft_file.read_text().splitlines()
    lines[4] = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}'
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    s = run_job("sft", _spec(bad), tmp_path / "run")
    assert s.state == JobState.FAILED and s.steps == 0 and not s.weights_updated
    assert s.failure_reason == "invalid training record: bad.jsonl:5: field 'messages[1].content': missing (param: data)"
    _assert_stopped_before_training(tmp_path / "run")


def test_unknown_config_key_stops_before_training(sft_file: Path, tmp_path: Path) -> None:
    s = run_job("sft", _spec(sft_file, lerning_rate=1e-4), tmp_path / "run")
    assert s.state == JobState.FAILED
    assert s.failure_reason == "invalid sft spec: lerning_rate: unknown field (param: lerning_rate)"
    _assert_stopped_before_training(tmp_path / "run")


@pytest.mark.skipif(capabilities().four_bit, reason="this host has a 4-bit path (bitsandbytes on a GPU)")
def test_qlora_is_refused_without_bitsandbytes(sft_file: Path, tmp_path: Path) -> None:
    s = run_job("sft", _spec(sft_file, finetune="qlora"), tmp_path / "run")
    assert s.state == JobState.FAILED
    assert f"four_bit is not supported on backend '{detect_backend()}'" in (s.failure_reason or "")
    assert "QLoRA needs bitsandbytes" in (s.failure_reason or "")
    _assert_stopped_before_training(tmp_path / "run")


@pytest.mark.skipif(capabilities().fp16, reason="this host computes float16 (a GPU)")
def test_float16_on_cpu_is_refused(sft_file: Path, tmp_path: Path) -> None:
    s = run_job("sft", _spec(sft_file, dtype="float16"), tmp_path / "run")
    assert s.state == JobState.FAILED
    assert f"fp16 is not supported on backend '{detect_backend()}'" in (s.failure_reason or "")


def test_early_stopping_on_eval_loss(sft_file: Path, tmp_path: Path) -> None:
    # min_delta larger than any possible improvement: only the first evaluation counts as one.
    spec = _spec(sft_file, max_steps=40, eval_every_steps=2, early_stopping={"patience": 2, "min_delta": 100.0},
                 data={"train": str(sft_file), "eval_fraction": 0.25})
    s = run_job("sft", spec, tmp_path / "run")
    assert s.state == JobState.SUCCEEDED
    assert s.steps == 6 and s.extras["early_stopped_at_step"] == 6
    assert s.eval_loss_best is not None


def test_run_directory_contents(sft_file: Path, tmp_path: Path) -> None:
    s = run_job("sft", _spec(sft_file, max_steps=4, checkpoint_every_steps=2, sample_prompts=["What does a cow say?"]),
                tmp_path / "run", run_id="run-test", job_id="job-test")
    root = tmp_path / "run"
    spec = json.loads((root / "spec.json").read_text())
    assert spec["max_steps"] == 4 and spec["finetune"] == "lora"
    replay = json.loads((root / "replay.json").read_text())
    assert replay["spec"] == spec and replay["seeds"] == {"seed": 42, "data_seed": 42}
    assert replay["datasets"][0]["sha256"] == __import__("hashlib").sha256(sft_file.read_bytes()).hexdigest()
    assert replay["datasets"][0]["size_bytes"] == sft_file.stat().st_size and replay["backend"] == str(detect_backend())
    assert {"torch", "transformers", "trl", "peft"} <= set(replay["packages"])
    summary = json.loads((root / "training_summary.json").read_text())
    assert summary["run_id"] == "run-test" and summary["job_id"] == "job-test" and summary["steps"] == 4
    for key in ("loss_first", "loss_last", "loss_best", "tokens", "duration_s", "weights_updated", "failure_reason"):
        assert key in summary
    assert summary["tokens_per_second"] > 0 and summary["tokens"] == s.tokens > 0
    assert not (root / ".staging").exists()
    assert summary["extras"]["samples"][0]["prompt"] == "What does a cow say?"
    rows = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all({"loss", "learning_rate", "grad_norm", "tokens", "memory_bytes"} <= set(r) for r in rows)
    assert RunDir(root).checkpoint_steps() == [2, 4]
    assert (root / "adapter" / "adapter_model.safetensors").exists() and s.outputs["adapter"] == str(root / "adapter")


def test_reward_model_with_lora_exports_a_loadable_verifier(pref_file: Path, tmp_path: Path) -> None:
    s = run_job("rm", _spec(pref_file, finetune="lora", max_steps=6, learning_rate=1e-2, batch_size=8), tmp_path / "r")
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    adapter = Path(s.outputs["adapter"])
    assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    verifier = RewardModelVerifier.load(adapter)
    assert verifier.manifest["format"] == "peft-seq-cls"
    assert verifier.manifest["normalization"]["held_out"] == 0.0  # no eval data: stats from training pairs
    a = verifier.score("Tell me about the cow.", "Sure, the cow is lovely.")
    assert verifier.score("Tell me about the cow.", "Sure, the cow is lovely.", normalize=True) == pytest.approx(
        (a - verifier.mean) / verifier.std)


@pytest.mark.slow
def test_torch_compile_trains_the_same_model(sft_file: Path, tmp_path: Path) -> None:
    """torch_compile runs the steps through inductor; the losses are those of the eager run."""
    from torch._dynamo.utils import counters

    counters.clear()
    runs = {}
    for compiled in (False, True):
        s = run_job("sft", _spec(sft_file, finetune="full", max_steps=4, learning_rate=1e-3, torch_compile=compiled),
                    tmp_path / f"r{int(compiled)}")
        assert s.state == JobState.SUCCEEDED, s.failure_reason
        runs[compiled] = [r["loss"] for r in RunDir(tmp_path / f"r{int(compiled)}").read_metrics() if "loss" in r]
    assert counters["stats"]["unique_graphs"] > 0  # dynamo compiled graphs (only in the compiled run)
    assert len(runs[True]) == len(runs[False]) == 4
    assert runs[True] == pytest.approx(runs[False], rel=2e-3)
