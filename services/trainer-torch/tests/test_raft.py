"""RAFT: the rejection step keeps exactly the training-eligible top fraction, a cycle that keeps nothing says why
and does not train, a stopped run resumes at the cycle and stage where it stopped without regenerating or
re-verifying anything finished (and ends where an uninterrupted run ends), and RAFT learns on the tiny model:
mean verifier reward on held-out prompts rises by at least 0.3."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from halo_schemas.jobs import JobState
from halo_schemas.rl import RAFTSpec
from halo_trainer_torch.core.components.hooks import JobControl, Reporter
from halo_trainer_torch.core.runner import Preempted, run_job
from halo_training.raft_state import VerifiedSample, select_samples
from pydantic import ValidationError

DATA = Path(__file__).resolve().parents[1] / "src" / "halo_trainer_torch" / "data"
TRAIN, HELD_OUT = DATA / "rl_tags_train.jsonl", DATA / "rl_tags_heldout.jsonl"
TAG_VERIFIER = {"name": "regex_format", "params": {"patterns": ["^<answer>", "</answer>$", "^<answer>[a-z]+</answer>$"]}}


@pytest.fixture(scope="module")
def warm_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A short SFT warm-up on the bundled task (held-out sampled reward ~0.5)."""
    s = run_job("sft", {"model": "tiny://llama", "data": {"train": str(TRAIN)}, "finetune": "full", "max_steps": 40,
                        "batch_size": 8, "max_length": 64, "learning_rate": 3e-3, "warmup_ratio": 0.0,
                        "lr_scheduler": "constant", "checkpoint_every_steps": 1000, "packing": False,
                        "dtype": "float32"}, tmp_path_factory.mktemp("warm") / "sft")
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    return s.outputs["final"]


def raft_spec(model: str, **kw: Any) -> dict[str, Any]:
    base = {"model": model, "data": {"train": str(TRAIN), "eval": str(HELD_OUT)}, "verifiers": [TAG_VERIFIER],
            "verifier_transport": "local", "finetune": "full", "cycles": 4, "batch_size": 8, "num_generations": 8,
            "max_new_tokens": 24, "learning_rate": 1e-3, "warmup_ratio": 0.0, "lr_scheduler": "constant",
            "reward_threshold": 1.0, "keep_top_fraction": 1.0, "eval_num_generations": 8, "max_length": 64,
            "dtype": "float32"}
    return {**base, **kw}


def state_of(run: Path) -> dict[str, Any]:
    return json.loads((run / "raft_state.json").read_text())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- selection ---------------------------------------------------------------------------------------
def vs(p: int, s: int, text: str, total: float | None, success: bool = True, compile_only: bool = False) -> VerifiedSample:
    return VerifiedSample(p, s, text, total, success, compile_only, None if total is not None else "v: internal")


SAMPLES = [
    vs(0, 0, "a", 1.0), vs(0, 1, "a ", 1.0),  # duplicate of (0, "a") after stripping
    vs(0, 2, "b", 0.9), vs(0, 3, "  ", 1.0),  # empty
    vs(1, 0, "c", None, success=False),  # a verifier could not check it
    vs(1, 1, "d", 0.7, success=False),  # not successful
    vs(1, 2, "e", 0.5, compile_only=True),  # compile-only success
    vs(1, 3, "f", 0.4),  # below the threshold
    vs(2, 0, "g", 0.8), vs(2, 1, "h", 0.6), vs(2, 2, "i", 1.0),
]


def test_selection_keeps_the_eligible_top_fraction_and_counts_every_rejection() -> None:
    sel = select_samples(SAMPLES, threshold=0.45, keep_fraction=0.5)
    # eligible, best first: (0,a)=1.0, (2,i)=1.0, (0,b)=.9, (2,g)=.8, (2,h)=.6 -> top half of 5 = 3
    assert [(s.prompt_index, s.text) for s in sel.kept] == [(0, "a"), (2, "i"), (0, "b")]
    assert sel.eligible == 5
    assert sel.rejected == Counter({"empty": 1, "verifier_error": 1, "not_success": 1, "compile_only": 1,
                                    "below_threshold": 1, "duplicate": 1, "below_top_fraction": 2})
    assert sum(sel.rejected.values()) + len(sel.kept) == len(SAMPLES)


def test_selection_options() -> None:
    allow = select_samples(SAMPLES, threshold=0.45, keep_fraction=1.0, allow_compile_only=True, require_success=False,
                           dedupe=False)
    assert {s.text for s in allow.kept} == {"a", "a ", "b", "d", "e", "g", "h", "i"}
    capped = select_samples(SAMPLES, threshold=0.0, keep_fraction=1.0, max_per_prompt=1)
    assert [(s.prompt_index, s.text) for s in capped.kept] == [(0, "a"), (2, "i"), (1, "f")]
    assert capped.rejected["per_prompt_cap"] == 3
    one = select_samples(SAMPLES, threshold=0.95, keep_fraction=0.01)
    assert [s.text for s in one.kept] == ["a"]  # a tiny fraction still keeps the best sample


def test_a_selection_that_keeps_nothing_says_why() -> None:
    sel = select_samples([vs(0, 0, "x", 0.2), vs(0, 1, "y", 0.1, success=False), vs(1, 0, "z", None, success=False)],
                         threshold=0.5, keep_fraction=0.5)
    assert sel.kept == [] and sel.eligible == 0
    assert sel.why_empty == "no sample passed selection: below_threshold 1, not_success 1, verifier_error 1"


def test_raft_spec_validation() -> None:
    RAFTSpec.model_validate(raft_spec("tiny://llama"))
    with pytest.raises(ValidationError, match="max_steps does not apply"):
        RAFTSpec.model_validate(raft_spec("tiny://llama", max_steps=10))
    with pytest.raises(ValidationError, match="keep_top_fraction"):
        RAFTSpec.model_validate(raft_spec("tiny://llama", keep_top_fraction=0.0))
    with pytest.raises(ValidationError, match="curriculum.strategy"):
        RAFTSpec.model_validate(raft_spec("tiny://llama", curriculum={"strategy": "random"}))


# ---- runs ----------------------------------------------------------------------------------------------
class Recorder(Reporter):
    def __init__(self) -> None:
        self.progress_events: list[tuple[int, dict[str, float]]] = []
        self.checkpoints: list[int] = []
        self.artifacts: list[str] = []

    def progress(self, step: int, total_steps: int | None, metrics: dict[str, float]) -> None:
        self.progress_events.append((step, metrics))

    def checkpointed(self, step: int, path: str) -> None:
        self.checkpoints.append(step)

    def artifact(self, kind: str, fmt: str, path: str, step: int | None = None) -> None:
        self.artifacts.append(kind)


def test_raft_raises_held_out_reward_after_a_warm_up(warm_model: str, tmp_path: Path) -> None:
    rec = Recorder()
    run = tmp_path / "run"
    s = run_job("raft", raft_spec(warm_model, learning_rate=2e-3, lr_decay=0.7), run, reporter=rec)
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    ex = s.extras
    before, after = ex["eval_reward_before"], ex["eval_reward_after"]
    assert after - before >= 0.3, (before, after)
    assert ex["eval_on"] == "eval" and ex["eval_prompts"] == 16
    on_disk = json.loads((run / "training_summary.json").read_text())["extras"]
    assert (on_disk["eval_reward_before"], on_disk["eval_reward_after"]) == (before, after)

    cycles = ex["cycles"]
    assert [c["cycle"] for c in cycles] == [1, 2, 3, 4] and ex["trained_cycles"] == 4
    assert [c["learning_rate"] for c in cycles] == pytest.approx([2e-3, 1.4e-3, 9.8e-4, 6.86e-4])  # x0.7 per cycle
    for c in cycles:
        assert c["samples"] == 49 * 8 and c["kept"] == c["eligible"] > 0
        assert c["kept"] + sum(c["rejected"].values()) == c["samples"]
        assert 1 <= c["steps"] <= -(-c["kept"] // 8)  # one epoch over the kept samples (packed into rows)
    assert cycles[-1]["pass_rate"] > cycles[0]["pass_rate"]  # the policy's own samples got better cycle by cycle
    assert s.steps == sum(c["steps"] for c in cycles) and s.weights_updated
    assert rec.checkpoints == [sum(c["steps"] for c in cycles[: i + 1]) for i in range(4)]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(
        f"checkpoint-{n}" for n in rec.checkpoints[-2:])
    # only the newest two cycles keep their weights; every cycle keeps its samples
    assert [(run / "cycles" / str(k) / "model").exists() for k in (1, 2, 3, 4)] == [False, False, True, True]
    for k in (1, 2, 3, 4):
        d = run / "cycles" / str(k)
        assert len(d.joinpath("verified.jsonl").read_text().splitlines()) == 49 * 8
        assert len(d.joinpath("selected.jsonl").read_text().splitlines()) == cycles[k - 1]["kept"]
    assert Path(s.outputs["final"]).joinpath("model.safetensors").exists() and rec.artifacts == ["model"]
    # metrics: numbers only, steps never go back; events carry numbers only
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(v, (int, float)) for r in rows for v in r.values())
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps)
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, s.steps + 1))
    assert all(isinstance(v, float) for _, m in rec.progress_events for v in m.values())
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [r["cycle"] for r in samples] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    stats = json.loads((run / "raft_prompt_stats.json").read_text())["prompts"]
    assert len(stats) == 49 and all(0.0 <= v <= 1.0 for v in stats.values())


def test_a_cycle_that_keeps_nothing_says_why_and_does_not_train(warm_model: str, tmp_path: Path) -> None:
    rec = Recorder()
    never = {"name": "regex_format", "params": {"pattern": "^NEVER MATCHES$"}}
    s = run_job("raft", raft_spec(warm_model, cycles=2, verifiers=[never], eval_num_generations=1,
                                  reward_threshold=0.0), tmp_path / "run", reporter=rec)
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    for c in s.extras["cycles"]:
        assert c["kept"] == 0 and c["trained"] is False and c["steps"] == 0
        assert c["why"].startswith("no sample passed selection: not_success ")  # the most frequent reason first
        assert set(c["rejected"]) <= {"not_success", "empty"} and sum(c["rejected"].values()) == 49 * 8
        assert c["why"] == "no sample passed selection: " + ", ".join(
            f"{r} {n}" for r, n in Counter(c["rejected"]).most_common())
    assert s.steps == 0 and not s.weights_updated and s.outputs == {} and s.extras["empty_cycles"] == 2
    assert rec.checkpoints == []  # nothing new to checkpoint
    assert not any("loss" in json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    kept_events = [m["raft_kept"] for _, m in rec.progress_events if "raft_kept" in m]
    assert kept_events == [0.0, 0.0]


class StopWhen(JobControl):
    """Preempts (like a service shutdown) as soon as ``pred(run_dir)`` holds at a stop check."""

    def __init__(self, pred: Any) -> None:
        super().__init__()
        self.pred = pred

    def stop_reason(self) -> str | None:
        return "preempted" if self.pred() else super().stop_reason()


def test_resume_continues_at_the_cycle_and_stage_where_it_stopped(warm_model: str, tmp_path: Path) -> None:
    spec = raft_spec(warm_model, cycles=3)
    ref = run_job("raft", spec, tmp_path / "ref")  # uninterrupted
    assert ref.state == JobState.SUCCEEDED, ref.failure_reason

    run = tmp_path / "run"

    def after_cycle2_verify() -> bool:
        try:
            return "verify" in state_of(run)["cycles"]["2"]["stages"]
        except (FileNotFoundError, KeyError):
            return False

    with pytest.raises(Preempted):
        run_job("raft", spec, run, control=StopWhen(after_cycle2_verify))
    st = state_of(run)
    assert sorted(st["cycles"]["2"]["stages"]) == ["generate", "verify"] and "3" not in st["cycles"]
    frozen = {k: sha(run / "cycles" / k / "samples.jsonl") for k in ("1", "2")}
    verified2 = sha(run / "cycles" / "2" / "verified.jsonl")

    s = run_job("raft", spec, run, attempt=2)
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    attempts = {c["cycle"]: c["attempts"] for c in s.extras["cycles"]}
    assert attempts[1] == dict.fromkeys(("generate", "verify", "select", "train", "checkpoint"), 1)
    assert attempts[2] == {"generate": 1, "verify": 1, "select": 2, "train": 2, "checkpoint": 2}
    assert attempts[3] == dict.fromkeys(("generate", "verify", "select", "train", "checkpoint"), 2)
    assert {k: sha(run / "cycles" / k / "samples.jsonl") for k in ("1", "2")} == frozen  # not regenerated
    assert sha(run / "cycles" / "2" / "verified.jsonl") == verified2  # not re-verified
    assert s.extras["raft_attempts"] == 2 and s.resumed_from_step == ref.extras["cycles"][0]["steps"]
    # ...and it ends exactly where the uninterrupted run ended
    for k in ("1", "2", "3"):
        assert sha(run / "cycles" / k / "verified.jsonl") == sha(tmp_path / "ref" / "cycles" / k / "verified.jsonl")
    assert s.steps == ref.steps and s.extras["eval_reward_after"] == ref.extras["eval_reward_after"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, s.steps + 1))  # no step logged twice
    assert sum(1 for r in rows if r.get("raft_stage") == 2.0) == 3  # one verify row per cycle


def test_resume_mid_generation_keeps_the_finished_prompts(warm_model: str, tmp_path: Path) -> None:
    spec = raft_spec(warm_model, cycles=1, rollout_batch_size=64, eval_num_generations=1)  # 8 prompts per chunk
    ref = run_job("raft", spec, tmp_path / "ref")
    run = tmp_path / "run"
    samples = run / "cycles" / "1" / "samples.jsonl"

    def after_two_chunks() -> bool:
        return samples.exists() and len(samples.read_text().splitlines()) >= 16

    with pytest.raises(Preempted):
        run_job("raft", spec, run, control=StopWhen(after_two_chunks))
    first = samples.read_text().splitlines()
    assert len(first) == 16 and "generate" not in state_of(run)["cycles"].get("1", {}).get("stages", {})
    with samples.open("a") as f:
        f.write('{"prompt_index": 99, "torn')  # a line cut by the kill: dropped, not trusted
    s = run_job("raft", spec, run, attempt=2)
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    lines = samples.read_text().splitlines()
    assert lines[:16] == first and len(lines) == 49
    assert state_of(run)["cycles"]["1"]["stages"]["generate"]["resumed_prompts"] == 16
    assert sorted(lines) == sorted((tmp_path / "ref" / "cycles" / "1" / "samples.jsonl").read_text().splitlines())
    assert s.extras["eval_reward_after"] == ref.extras["eval_reward_after"]


def test_curriculum_and_shaping_drive_each_cycle(warm_model: str, tmp_path: Path) -> None:
    s = run_job("raft", raft_spec(warm_model, cycles=3, curriculum={"strategy": "progressive", "progressive_start": 0.2},
                                  shaping={"strategy": "annealing", "start_threshold": 0.0, "start_keep_fraction": 1.0},
                                  reward_threshold=1.0, keep_top_fraction=0.5, eval_num_generations=1),
                tmp_path / "run")
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    cycles = s.extras["cycles"]
    assert [c["prompts"] for c in cycles] == [10, 30, 49]  # ceil(0.2, 0.6, 1.0 x 49)
    assert [(c["threshold"], c["keep_fraction"]) for c in cycles] == [(0.0, 1.0), (0.5, 0.75), (1.0, 0.5)]
    st = state_of(tmp_path / "run")
    first = st["cycles"]["1"]["stages"]["generate"]["indices"]
    lengths = [len(json.loads(line)["messages"][0]["content"]) for line in TRAIN.read_text().splitlines()]
    assert [lengths[i] for i in first] == sorted(lengths)[:10]  # the easiest (shortest) prompts first
    assert cycles[0]["kept"] == cycles[0]["eligible"]  # keep fraction 1.0 in cycle 1


def test_raft_with_lora_keeps_training_one_adapter_across_cycles(warm_model: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    s = run_job("raft", raft_spec(warm_model, cycles=2, finetune="lora", learning_rate=1e-2, prompts_per_cycle=20,
                                  merge_adapter=True, eval_num_generations=2, sample_prompts=["tag:owl"],
                                  sample_max_new_tokens=16), run)
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    cycles = s.extras["cycles"]
    assert [c["prompts"] for c in cycles] == [20, 20] and all(c["trained"] for c in cycles)
    st = state_of(run)
    assert st["cycles"]["2"]["stages"]["train"]["policy"] == "cycles/2/adapter"
    from safetensors.torch import load_file

    a1 = load_file(str(run / "cycles" / "1" / "adapter" / "adapter_model.safetensors"))
    a2 = load_file(str(run / "cycles" / "2" / "adapter" / "adapter_model.safetensors"))
    assert a1.keys() == a2.keys() and any(not (a1[k] == a2[k]).all() for k in a1)  # cycle 2 trained it further
    exported = load_file(str(Path(s.outputs["adapter"]) / "adapter_model.safetensors"))
    assert all((exported[k] == a2[k]).all() for k in a2)  # the last cycle's adapter is the run's adapter
    assert (Path(s.outputs["final"]) / "model.safetensors").exists()  # and merged into the base
    assert s.weights_updated and 0 < s.trainable_parameters < s.total_parameters  # type: ignore[operator]
    assert [x["prompt"] for x in s.extras["samples"]] == ["tag:owl"]
