"""Search-space validation, Optuna's suggestions mapped onto nested spec paths, the grid and the objective —
without NATS. Bad input is refused naming the field, before any trial could start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from halo_common.errors import BadRequest
from halo_schemas.sweeps import ObjectiveSpec, SearchParam, SweepBest, SweepTrial
from halo_schemas.training import DPOSpec, SFTSpec
from halo_sweeps.core.capacity import check_parallel, device_slots, host_trial_slots
from halo_sweeps.core.manage import fork_spec, parse_sweep
from halo_sweeps.core.objective import (
    EvalTarget,
    ObjectiveMissing,
    ObjectiveTracker,
    check_objective,
    eval_target,
    eval_value,
)
from halo_sweeps.core.space import apply, grid_values, path_problem, suggest

BASE = {"model": "tiny://llama", "data": {"train": "chat.jsonl"}, "max_steps": 10}


def sweep(**over: Any) -> dict[str, Any]:
    return {"method": "sft", "base": BASE,
            "search_space": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
                             "lora.rank": {"type": "int", "low": 2, "high": 16}}, **over}


def refused(raw: dict[str, Any]) -> BadRequest:
    with pytest.raises(BadRequest) as err:
        parse_sweep(raw)
    return err.value


def test_paths_of_the_spec_are_found_and_others_are_named() -> None:
    assert path_problem(SFTSpec, "learning_rate") is None
    assert path_problem(SFTSpec, "lora.rank") is None
    assert path_problem(SFTSpec, "early_stopping.patience") is None  # an optional section
    assert "LoRASpec" not in (path_problem(SFTSpec, "lora.rnk") or "")
    assert "lora has no field 'rnk'" in (path_problem(SFTSpec, "lora.rnk") or "")
    assert "SFTSpec has no field 'lerning_rate'" in (path_problem(SFTSpec, "lerning_rate") or "")
    assert "learning_rate is a value, not a section" in (path_problem(SFTSpec, "learning_rate.max") or "")
    assert path_problem(DPOSpec, "loss_type") is None and path_problem(SFTSpec, "loss_type") is not None


def test_a_valid_sweep_passes() -> None:
    parsed = parse_sweep(sweep())
    assert parsed.method == "sft" and set(parsed.search_space) == {"learning_rate", "lora.rank"}


def test_a_path_the_base_spec_does_not_have_is_refused_naming_it() -> None:
    err = refused(sweep(search_space={"lora.rnk": {"type": "int", "low": 2, "high": 8}}))
    assert err.param == "search_space.lora.rnk" and "the sft spec has no field 'lora.rnk'" in str(err)
    err = refused({**sweep(), "search_space": {"loss_type": {"type": "categorical", "choices": ["ipo"]}}})
    assert err.param == "search_space.loss_type"


def test_an_empty_range_is_refused_naming_it() -> None:
    err = refused(sweep(search_space={"learning_rate": {"type": "float", "low": 0.1, "high": 0.1}}))
    assert err.param == "search_space.learning_rate"
    assert "empty range: low (0.1) must be below high (0.1)" in str(err)
    err = refused(sweep(search_space={"beta": {"type": "categorical", "choices": []}}))
    assert "search_space.beta" in str(err) and "at least one choice" in str(err)


def test_values_the_spec_refuses_are_named_before_any_trial() -> None:
    err = refused(sweep(search_space={"lora.rank": {"type": "int", "low": 0, "high": 8}}))
    assert err.param == "search_space.lora.rank" and "value 0 is refused" in str(err)
    err = refused({"method": "dpo", "base": {**BASE, "data": {"train": "prefs.jsonl"}},
                   "search_space": {"loss_type": {"type": "categorical", "choices": ["sigmoid", "bogus"]}}})
    assert err.param == "search_space.loss_type" and "'bogus'" in str(err)
    err = refused(sweep(search_space={"tags": {"type": "categorical", "choices": ["a"]}}))
    assert err.param == "search_space.tags"


def test_an_objective_the_method_never_reports_is_refused() -> None:
    err = refused(sweep(objective={"metric": "reward_accuracy"}))
    assert err.param == "objective.metric" and "sft never reports 'reward_accuracy'" in str(err)
    err = refused(sweep(objective={"metric": "eval_loss"}))
    assert err.param == "objective.metric" and "needs evaluation data" in str(err)
    parse_sweep(sweep(base={**BASE, "data": {"train": "chat.jsonl", "eval_fraction": 0.2}},
                      objective={"metric": "eval_loss"}))
    check_objective("dpo", DPOSpec.model_validate({**BASE, "data": {"train": "p.jsonl"}}),
                    ObjectiveSpec(metric="reward_accuracy", direction="maximize"))


def test_an_invalid_base_spec_or_method_is_named() -> None:
    assert refused(sweep(base={**BASE, "lerning_rate": 1})).param == "base.lerning_rate"
    assert refused(sweep(method="sfft")).param == "method"


def test_grid_values_are_exact_and_a_float_needs_a_step() -> None:
    grid = grid_values({"lora.rank": SearchParam(type="int", low=2, high=8, step=2),
                        "learning_rate": SearchParam(type="float", low=0.001, high=0.003, step=0.001),
                        "loss_type": SearchParam(type="categorical", choices=["ipo", "hinge"])})
    assert grid == {"lora.rank": [2, 4, 6, 8], "learning_rate": [0.001, 0.002, 0.003], "loss_type": ["ipo", "hinge"]}
    err = refused(sweep(sampler="grid"))
    assert err.param == "search_space.learning_rate.log"


def test_suggestions_land_on_nested_spec_paths() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    space = parse_sweep(sweep()).search_space
    for _ in range(20):
        trial = study.ask()
        params = suggest(trial, space)
        assert set(trial.params) == {"learning_rate", "lora.rank"}
        assert 1e-5 <= params["learning_rate"] <= 1e-1 and isinstance(params["lora.rank"], int)
        spec = SFTSpec.model_validate(apply(BASE, params))
        assert spec.learning_rate == params["learning_rate"] and spec.lora.rank == params["lora.rank"]
        assert spec.lora.dropout == 0.05  # the rest of the section keeps its defaults
        study.tell(trial, 0.0)
    assert BASE == {"model": "tiny://llama", "data": {"train": "chat.jsonl"}, "max_steps": 10}  # not mutated


def test_objective_final_and_best() -> None:
    final = ObjectiveTracker(ObjectiveSpec(metric="loss"))
    best = ObjectiveTracker(ObjectiveSpec(metric="reward_accuracy", mode="best", direction="maximize"))
    for step, loss, acc in [(1, 3.0, 0.5), (3, 2.0, 0.9), (2, 2.5, 0.6)]:
        assert final.add(step, {"loss": loss, "grad_norm": 1.0}) == loss
        best.add(step, {"reward_accuracy": acc})
    assert final.add(4, {"grad_norm": 1.0}) is None
    assert final.value() == 2.0 and final.last_step == 3  # the last step's value, whatever the arrival order
    assert best.value() == 0.9
    assert ObjectiveTracker(ObjectiveSpec()).value() is None


def test_fork_spec_drops_the_sweep_tags_and_applies_overrides() -> None:
    trial = SweepTrial(number=3, state="complete", value=1.0, run_id="run-1")
    found = SweepBest(sweep_id="sweep-1", trial=trial, method="sft",
                      spec={**BASE, "tags": ["mine", "sweep:sweep-1", "sweep-trial:3"], "lora": {"rank": 4}})
    spec = fork_spec(found, {"max_steps": 500, "lora.alpha": 8.0}, None)
    assert spec["tags"] == ["mine", "sweep-fork:sweep-1"] and spec["max_steps"] == 500
    assert spec["lora"] == {"rank": 4, "alpha": 8.0} and "trial 3" in spec["name"]
    with pytest.raises(BadRequest) as err:
        fork_spec(found, {"max_stepz": 1}, None)
    assert err.value.param == "overrides.max_stepz"


def test_an_eval_objective_is_checked_before_any_trial() -> None:
    sw = parse_sweep(sweep(objective={"metric": "eval:halo_arith_mc:acc_norm", "direction": "maximize",
                                      "eval": {"limit": 4}}))
    assert eval_target(sw.objective) == EvalTarget("halo_arith_mc", "acc_norm")
    assert eval_target(ObjectiveSpec(metric="eval:arc_easy")) == EvalTarget("arc_easy", None)
    assert eval_target(ObjectiveSpec(metric="loss")) is None
    for metric in ("eval:", "eval::acc", "eval:arc_easy:"):
        assert refused(sweep(objective={"metric": metric})).param == "objective.metric"
    assert "need an eval:<task>" in str(refused(sweep(objective={"metric": "loss", "eval": {"limit": 4}})))
    err = refused(sweep(objective={"metric": "eval:halo_arith_mc"}, pruning={"kind": "median"}))
    assert err.param == "pruning.kind" and "no intermediate values" in str(err)
    err = refused({"method": "rm", "base": {**BASE, "data": {"train": "prefs.jsonl"}},
                   "search_space": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}},
                   "objective": {"metric": "eval:halo_arith_mc"}})
    assert err.param == "objective.metric" and "reward model" in str(err)
    err = refused(sweep(base={**BASE, "backend": "mlx"}, objective={"metric": "eval:halo_arith_mc"}))
    assert err.param == "objective.metric" and "MLX adapters" in str(err)


def test_an_eval_value_is_the_tasks_metric(tmp_path: Path) -> None:
    # The shape of an lm-eval job's finished summary (halo_eval.handlers) and of lm_eval_summary.json.
    full = tmp_path / "lm_eval_summary.json"
    full.write_text(json.dumps({"tasks": {"halo_arith_mc": {"primary_metric": "acc", "value": 0.25, "metrics": {
        "acc": {"value": 0.25, "stderr": 0.1}, "acc_norm": {"value": 0.5, "stderr": 0.1}}}}}))
    summary = {"tasks": {"halo_arith_mc": {"metric": "acc", "value": 0.25, "stderr": 0.1, "n": 4}},
               "summary_path": str(full)}
    assert eval_value(summary, EvalTarget("halo_arith_mc")) == 0.25
    assert eval_value(summary, EvalTarget("halo_arith_mc", "acc")) == 0.25
    assert eval_value(summary, EvalTarget("halo_arith_mc", "acc_norm")) == 0.5
    with pytest.raises(ObjectiveMissing, match="reports acc, acc_norm, not 'f1'"):
        eval_value(summary, EvalTarget("halo_arith_mc", "f1"))
    with pytest.raises(ObjectiveMissing, match="no result for task 'arc_easy'"):
        eval_value(summary, EvalTarget("arc_easy"))


def test_parallel_trials_are_capped_by_the_hosts_devices() -> None:
    slots = device_slots()  # computed from this host: 1 on CPU (and on one device), N on N GPUs
    assert host_trial_slots() == slots and host_trial_slots(3) == 3
    check_parallel(parse_sweep(sweep(parallel_trials=slots)), slots)
    with pytest.raises(BadRequest) as err:
        check_parallel(parse_sweep(sweep(parallel_trials=slots + 1)), slots)
    assert err.value.param == "parallel_trials" and f"this host has {slots} trial slot" in str(err.value)
    assert "oversubscribe: true" in str(err.value)
    check_parallel(parse_sweep(sweep(parallel_trials=slots + 1, oversubscribe=True)), slots)
    check_parallel(parse_sweep(sweep(parallel_trials=4)), 4)  # HALO_SWEEPS_TRIAL_SLOTS=4
