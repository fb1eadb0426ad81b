"""reward_model: a reward model trained here by trainer-torch's ``rm`` recipe (the tiny model, a few steps) scores
completions through the verifier engine and the service, normalised by the held-out statistics the run recorded;
unknown runs, non-RM runs and models that need remote code are refused before any work."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from halo_bus import InMemoryBus
from halo_clients.verifier_sandbox import VerifierClient
from halo_common.errors import Forbidden, NotFound
from halo_common.paths import IMPORTED_MARKER, HaloPaths
from halo_schemas.verifiers import VerifierSpec, VerifyContext, VerifyItem, VerifyStage
from halo_verifiers.base import Runtime
from halo_verifiers.engine import VerifierEngine
from halo_verifiers.registry import REGISTRY

runner = pytest.importorskip("halo_trainer_torch.core.runner", reason="training the reward model needs trainer-torch")

TOPICS = ["cow", "dog", "cat", "duck", "sheep", "pig", "horse", "lion", "owl", "frog", "bee", "snake",
          "river", "mountain", "forest", "ocean", "desert", "city", "garden", "bridge"]
HELD_OUT = ["castle", "island", "valley", "meadow", "harbor", "canyon", "glacier", "village"]
RUN = "run-rm-verifier"
LORA = "run-rm-lora"


def _pairs(topics: list[str]) -> list[dict[str, Any]]:
    """Separable pairs (trainer-torch's RM fixture): a polite yes is chosen, a curt refusal rejected."""
    return [{"prompt": [{"role": "user", "content": f"Tell me about the {t}."}],
             "chosen": [{"role": "assistant", "content": f"Sure, the {t} is lovely."}],
             "rejected": [{"role": "assistant", "content": "No."}]} for t in topics]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HALO_HOME with one reward-model run, trained the way trainer-torch's own RM test trains it (~3 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is faster on one thread (see trainer-torch's conftest)
    try:
        root = tmp_path_factory.mktemp("rm-home")
        spec = {"model": "tiny://llama", "finetune": "full", "max_steps": 12, "learning_rate": 3e-3, "batch_size": 8,
                "max_length": 128, "checkpoint_every_steps": 1000, "warmup_ratio": 0.0, "lr_scheduler": "constant",
                "dtype": "float32", "data": {"train": str(_write(root / "train.jsonl", _pairs(TOPICS))),
                                             "eval": str(_write(root / "eval.jsonl", _pairs(HELD_OUT)))}}
        summary = runner.run_job("rm", spec, HaloPaths(root).run_dir(RUN))
        lora = runner.run_job("rm", {**spec, "finetune": "lora", "max_steps": 6, "learning_rate": 1e-2,
                                     "data": {"train": spec["data"]["train"]}}, HaloPaths(root).run_dir(LORA))
    finally:
        torch.set_num_threads(threads)
    assert summary.state.value == "succeeded", summary.failure_reason
    assert summary.extras["heldout_pairwise_accuracy"] == 1.0
    assert lora.state.value == "succeeded", lora.failure_reason
    return root


@pytest.fixture(scope="module")
def engine(home: Path) -> Iterator[VerifierEngine]:
    eng = VerifierEngine(Runtime(sandbox=None, paths=HaloPaths(home)), REGISTRY.copy(), cache=None, workers=2)
    yield eng
    eng.close()


def _spec(run: str = RUN, **params: Any) -> VerifierSpec:
    return VerifierSpec(name="reward_model", params={"run": f"run:{run}", **params})


def test_the_better_completion_scores_higher_normalised_by_the_recorded_stats(home: Path,
                                                                              engine: VerifierEngine) -> None:
    stats = json.loads((home / "runs" / RUN / "final" / "verifier.json").read_text())["normalization"]
    assert stats["held_out"] == 1.0
    prompt = f"Tell me about the {HELD_OUT[0]}."
    good = engine.verify(_spec(), f"Sure, the {HELD_OUT[0]} is lovely.", VerifyContext(prompt=prompt))
    bad = engine.verify(_spec(), "No.", VerifyContext(prompt=prompt))
    print(f"\ngood {good.reward:.4f} (raw {good.details['raw']:.4f}) bad {bad.reward:.4f} (raw {bad.details['raw']:.4f}) "
          f"stats mean {stats['mean']:.4f} std {stats['std']:.4f}")
    assert good.error is None and bad.error is None
    assert good.reward > 0.5 > bad.reward and good.success and not bad.success
    assert good.stage == VerifyStage.SCORED and good.details["stats_from"] == "held-out pairs"
    for r in (good, bad):
        z = (r.details["raw"] - stats["mean"]) / stats["std"]
        assert r.details["z"] == pytest.approx(z) and r.details["mean"] == stats["mean"]
        assert r.reward == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-6)
    hot = engine.verify(_spec(temperature=4.0), "No.", VerifyContext(prompt=prompt))
    assert hot.reward == pytest.approx(1 / (1 + math.exp(-bad.details["z"] / 4)), abs=1e-6)


def test_held_out_pairs_are_standardised_by_the_stats_they_produced(engine: VerifierEngine) -> None:
    """The run's mean/std were measured on these very held-out completions (batched, right-padded): scored one
    by one through the engine, their z-scores have mean 0 and sample std 1 — the rendering matches training."""
    items = [VerifyItem(completion=c, context=VerifyContext(prompt=f"Tell me about the {t}."))
             for t in HELD_OUT for c in (f"Sure, the {t} is lovely.", "No.")]
    results = engine.verify_batch(_spec(), items)
    zs = [r.details["z"] for r in results]
    mean = sum(zs) / len(zs)
    std = (sum((z - mean) ** 2 for z in zs) / (len(zs) - 1)) ** 0.5
    assert mean == pytest.approx(0.0, abs=1e-3) and std == pytest.approx(1.0, abs=1e-3)
    assert all(results[i].reward > results[i + 1].reward for i in range(0, len(results), 2))


def test_an_adapter_run_scores_with_its_training_pair_stats(home: Path, engine: VerifierEngine) -> None:
    manifest = json.loads((home / "runs" / LORA / "adapter" / "verifier.json").read_text())
    assert manifest["format"] == "peft-seq-cls" and manifest["normalization"]["held_out"] == 0.0
    r = engine.verify(_spec(LORA), "Sure, the cow is lovely.", VerifyContext(prompt="Tell me about the cow."))
    assert r.error is None and r.details["stats_from"] == "training pairs"
    stats = manifest["normalization"]
    assert r.details["z"] == pytest.approx((r.details["raw"] - stats["mean"]) / stats["std"])


def test_bad_runs_and_missing_prompt(home: Path, engine: VerifierEngine) -> None:
    with pytest.raises(NotFound, match="run run-nope not found"):
        engine.verify(_spec("run-nope"), "x", VerifyContext(prompt="p"))
    (home / "runs" / "run-sft-only" / "final").mkdir(parents=True)
    with pytest.raises(NotFound, match="no reward-model export"):
        engine.verify(_spec("run-sft-only"), "x", VerifyContext(prompt="p"))
    r = engine.verify(_spec(), "Sure.", VerifyContext())
    assert r.error_type == "missing_context" and r.details["field"] == "context.prompt" and r.reward == 0.0
    # An adapter run whose base model is gone: a typed error for the item (not cached), never a crash.
    shutil.copytree(home / "runs" / LORA, home / "runs" / "run-orphan")
    cfg = home / "runs" / "run-orphan" / "adapter" / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "base_model_name_or_path": str(home / "gone")}))
    r = engine.verify(_spec("run-orphan"), "Sure.", VerifyContext(prompt="Tell me about the cow."))
    assert r.error_type == "reward_model_load_failed" and "run-orphan" in (r.error or "") and r.reward == 0.0


def test_remote_code_is_refused_for_imported_runs_and_unless_allowed(home: Path) -> None:
    runs = home / "runs"
    for name, imported, trained_with in (("run-imported", True, True), ("run-local-rc", False, True),
                                         ("run-local-no-rc", False, False)):
        shutil.copytree(runs / RUN, runs / name)
        cfg = runs / name / "final" / "config.json"
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "auto_map": {"AutoModel": "modeling_x.X"}}))
        spec = json.loads((runs / name / "spec.json").read_text())
        (runs / name / "spec.json").write_text(json.dumps({**spec, "trust_remote_code": trained_with}))
        if imported:
            (runs / name / IMPORTED_MARKER).write_text("{}")
    allowing = VerifierEngine(Runtime(sandbox=None, paths=HaloPaths(home), allow_remote_code=True), REGISTRY.copy(),
                              cache=None, workers=1)
    refusing = VerifierEngine(Runtime(sandbox=None, paths=HaloPaths(home)), REGISTRY.copy(), cache=None, workers=1)
    try:
        with pytest.raises(Forbidden, match="imported bundle"):
            allowing.prepare(_spec("run-imported"))
        with pytest.raises(Forbidden, match="HALO_ALLOW_REMOTE_CODE=1"):
            refusing.prepare(_spec("run-local-rc"))
        with pytest.raises(Forbidden, match="trained with trust_remote_code"):
            allowing.prepare(_spec("run-local-no-rc"))
        assert allowing.prepare(_spec("run-local-rc")).verifier.export.trust_remote_code  # type: ignore[attr-defined]
        # Without auto_map an imported run's weights are plain data: it loads and scores.
        shutil.copytree(runs / RUN, runs / "run-imported-plain")
        (runs / "run-imported-plain" / IMPORTED_MARKER).write_text("{}")
        r = refusing.verify(_spec("run-imported-plain"), "No.", VerifyContext(prompt="Tell me about the castle."))
        assert r.error is None and r.reward < 0.5
    finally:
        allowing.close()
        refusing.close()


@pytest.fixture
async def service(home: Path, memory_bus: InMemoryBus) -> AsyncIterator[InMemoryBus]:
    from halo_verifier_sandbox.service import VerifierSandbox
    from halo_verifier_sandbox.settings import VerifierSandboxSettings

    svc = VerifierSandbox(VerifierSandboxSettings(home=home, workers=2, plugins=False), memory_bus)
    await svc.start()
    yield memory_bus
    await svc.stop()


async def test_the_service_loads_runs_from_its_halo_home(service: InMemoryBus) -> None:
    client = VerifierClient(service)
    items = [VerifyItem(completion=c, context=VerifyContext(prompt="Tell me about the glacier."))
             for c in ("Sure, the glacier is lovely.", "No.")]
    good, bad = await client.verify_batch(_spec(), items)
    assert good.reward > bad.reward and good.details["run"] == RUN
    inventory = await client.inventory()
    info = next(v for v in inventory.verifiers if v.name == "reward_model")
    assert info.available and info.kind == "judge" and "rm" in info.aliases
    with pytest.raises(NotFound, match="run-missing"):
        await client.verify(_spec("run-missing"), "x", VerifyContext(prompt="p"))


def test_the_data_score_step_uses_it_as_its_judge(tmp_path: Path, engine: VerifierEngine) -> None:
    """``data score`` with ``judge: reward_model``, the engine standing in for the verifier-sandbox client (the data
    service's plugin sends the same items over the bus): the curt refusals the run was trained to reject fail on the judge signal."""
    steps = pytest.importorskip("halo_data.core.steps", reason="the data pipeline is the halo-data service")
    from halo_schemas.data import ScoreParams

    rows = [{"prompt": f"Tell me about the {t}.", "completion": c}
            for t in HELD_OUT[:3] for c in (f"Sure, the {t} is lovely.", "No.")]
    src = _write(tmp_path / "rows.jsonl", rows)

    def verify(spec: VerifierSpec) -> Any:
        return lambda items: [r.reward for r in engine.verify_batch(
            spec, [VerifyItem(completion=c, context=ctx) for c, ctx in items])]

    params = ScoreParams(judge=_spec(), judge_context={"prompt": "prompt"}, minimums={"judge": 0.5, "length": 0.0})
    result = steps.run_step(params, src, tmp_path / "scored.jsonl", steps.Plugins(verify=verify))
    kept = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    rejected = [json.loads(line) for line in Path(result.files["rejected"]).read_text().splitlines()]
    assert [r["completion"] for r in kept] == [r["completion"] for r in rows[::2]]
    assert all(r["scores"]["judge"] > 0.5 for r in kept)
    assert [r["row"] for r in rejected] == [2, 4, 6] and all(r["failed"] == ["judge"] for r in rejected)
    assert all(r["scores"]["judge"] < 0.5 for r in rejected)
