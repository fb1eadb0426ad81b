"""Search-space validation, Optuna's suggestions mapped onto nested spec paths, the grid and the objective —
without NATS. Bad input is refused naming the field, before any trial could start."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from halo_common.errors import BadRequest
from halo_schemas.sweeps import ObjectiveSpec, SearchParam, SweepBest, SweepTrial
from halo_schemas.training import DPOSpec, SFTSpec
from halo_sweeps.core.manage import fork_spec, parse_sweep
from halo_sweeps.core.objective import ObjectiveTracker, check_objective
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
