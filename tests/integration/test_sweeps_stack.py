"""Sweeps on a real stack (nats-server, gateway, registry, trainer-torch, sweeps as processes; the tiny model):

* a TPE sweep of 8 trials over learning_rate and lora.rank beats its median trial and prunes a trial early
  (its job stopped before its last step); the registry groups the trials by tag and marks the best;
  ``show`` draws the table, the plot and the importances; ``fork-best`` trains from the best spec;
* grid sampling covers exactly the grid; a categorical over DPO ``loss_type`` runs each loss;
* kill -9 of the sweeps service mid-sweep, then a new one: the sweep completes with the requested number of
  trials, none run twice;
* an eval objective (``eval:<task>:<metric>``) scores each trained trial with an lm-eval job on the eval service
  (the built-in offline suite, a tiny limit): each trial's value is the metric the eval service recorded on its run;
* bad input is refused before anything starts, naming the field (an unknown eval task with its close matches).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from halo_testing.stack import ProcessStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHAT = [{"messages": [{"role": "user", "content": f"What does a {a} say?"},
                      {"role": "assistant", "content": f"A {a} says {s}."}]}
        for a, s in [("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("owl", "hoot")]]
PREFS = [{"prompt": f"What does a {a} say?", "chosen": f"A {a} says {s}.", "rejected": f"A {a} says {w}."}
         for a, s, w in [("cow", "moo", "woof"), ("dog", "woof", "moo"), ("cat", "meow", "quack"),
                         ("duck", "quack", "hoot")]]
SMALL = {"batch_size": 2, "max_length": 64, "checkpoint_every_steps": 1000}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    s = ProcessStack(tmp_path_factory.mktemp("sweeps"),
                     ["halo_gateway", "halo_registry", "halo_trainer_torch", "halo_sweeps", "halo_eval"],
                     ready={"trainer-torch", "registry", "sweeps", "eval"}, healthy=("ok", "degraded"), timeout_s=180,
                     env={"HALO_TRAINER_TORCH_STATUS_INTERVAL_S": "0.5", "HALO_TRAINER_TORCH_JOB_TYPES": "sft,dpo",
                          "HALO_SWEEPS_JOB_ACK_WAIT_S": "4", "HALO_SWEEPS_POLL_S": "1",
                          "HALO_SWEEPS_STATUS_INTERVAL_S": "1"})
    (s.root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHAT))
    (s.root / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PREFS))
    yield s
    s.close()


def api(stack: ProcessStack, method: str, path: str, **kw: Any) -> Any:
    r = httpx.request(method, stack.url + path, timeout=60, **kw)
    assert r.status_code < 300, r.text
    return r.json()


def create(stack: ProcessStack, spec: dict[str, Any], name: str) -> str:
    path = stack.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    r = stack.cli("sweep", "create", str(path), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)["sweep_id"]


def wait_done(stack: ProcessStack, sweep_id: str, timeout: float = 400) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{stack.url}/api/v1/sweeps/{sweep_id}", timeout=60)
        if r.status_code == 503:  # a restarted sweeps service is not up yet
            time.sleep(1)
            continue
        assert r.status_code == 200, r.text
        info = r.json()
        if info["state"] in ("succeeded", "failed", "cancelled"):
            assert info["state"] == "succeeded", info
            return info
        time.sleep(1)
    raise AssertionError(f"sweep {sweep_id} did not finish:\n{stack.logs()[-4000:]}")


def sft_sweep(stack: ProcessStack, **over: Any) -> dict[str, Any]:
    return {"method": "sft", "base": {"model": "tiny://llama", "data": {"train": str(stack.root / "chat.jsonl")},
                                      "max_steps": 40, **SMALL},
            "search_space": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
                             "lora.rank": {"type": "int", "low": 2, "high": 16}}, **over}


def test_tpe_finds_a_better_than_median_trial_and_prunes_early(stack: ProcessStack) -> None:
    sweep_id = create(stack, sft_sweep(stack, name="tpe", sampler="tpe", n_trials=8, pruning={
        "kind": "median", "startup_trials": 2, "warmup_steps": 5}), "tpe")
    info = wait_done(stack, sweep_id)
    trials = info["trials"]
    assert len(trials) == 8 and {t["state"] for t in trials} <= {"complete", "pruned"}
    values = [t["value"] for t in trials if t["state"] == "complete"]
    assert info["best"]["value"] == min(values) < statistics.median(values)
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned, "no trial was pruned"
    for t in pruned:  # its job was stopped before its last step
        job = api(stack, "GET", f"/api/v1/jobs/{t['job_id']}")
        assert job["state"] == "cancelled" and job["step"] < 40
    # The registry groups the trial runs by tag and marks the best one.
    runs = api(stack, "GET", "/api/v1/runs", params={"tag": f"sweep:{sweep_id}", "limit": 50})["items"]
    assert {r["run_id"] for r in runs} == {t["run_id"] for t in trials}
    best_runs = api(stack, "GET", "/api/v1/runs", params={"tag": "sweep-best", "limit": 50})["items"]
    assert info["best"]["run_id"] in {r["run_id"] for r in best_runs}
    assert {t["run_id"] for t in trials} & {r["run_id"] for r in best_runs} == {info["best"]["run_id"]}
    shown = stack.cli("sweep", "show", sweep_id)
    assert shown.returncode == 0, shown.stderr
    assert "*best*" in shown.stdout and "pruned" in shown.stdout and "loss by trial" in shown.stdout
    assert "parameter importances" in shown.stdout and "learning_rate" in shown.stdout
    listed = stack.cli("sweep", "list")
    assert sweep_id in listed.stdout and "8/8" in listed.stdout
    best = json.loads(stack.cli("sweep", "best", sweep_id, "--json").stdout)
    forked = stack.cli("sweep", "fork-best", sweep_id, "--set", "max_steps=3", "--name", "full")
    assert forked.returncode == 0, forked.stderr
    job_id = forked.stdout.split("job ")[1].split(",")[0]
    deadline = time.monotonic() + 120
    while (job := api(stack, "GET", f"/api/v1/jobs/{job_id}"))["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(1)
    assert job["state"] == "succeeded" and job["step"] == 3
    run = api(stack, "GET", f"/api/v1/runs/{job['run_id']}")
    spec = run["spec"]
    assert spec["learning_rate"] == best["spec"]["learning_rate"] and spec["lora"]["rank"] == best["spec"]["lora"]["rank"]
    assert f"sweep-fork:{sweep_id}" in spec["tags"] and f"sweep:{sweep_id}" not in spec["tags"]


def test_grid_covers_exactly_the_grid(stack: ProcessStack) -> None:
    spec = sft_sweep(stack, sampler="grid", n_trials=50, search_space={
        "learning_rate": {"type": "categorical", "choices": [1e-3, 1e-2]},
        "lora.rank": {"type": "int", "low": 2, "high": 4, "step": 2}})
    spec["base"]["max_steps"] = 3
    info = wait_done(stack, create(stack, spec, "grid"))
    assert info["n_trials"] == 50 and sum(info["counts"].values()) == 4
    assert sorted((t["params"]["learning_rate"], t["params"]["lora.rank"]) for t in info["trials"]) == [
        (1e-3, 2), (1e-3, 4), (1e-2, 2), (1e-2, 4)]


def test_a_categorical_over_dpo_loss_type_runs_each_loss(stack: ProcessStack) -> None:
    losses = ["sigmoid", "ipo", "hinge", "kto_pair", "rpo", "cdpo"]
    spec = {"method": "dpo", "sampler": "grid", "n_trials": 6,
            "base": {"model": "tiny://llama", "data": {"train": str(stack.root / "prefs.jsonl")}, "max_steps": 2,
                     "label_smoothing": 0.1, **SMALL},
            "search_space": {"loss_type": {"type": "categorical", "choices": losses}},
            "objective": {"metric": "reward_accuracy", "direction": "maximize", "mode": "best"}}
    info = wait_done(stack, create(stack, spec, "dpo"))
    assert sorted(t["params"]["loss_type"] for t in info["trials"]) == sorted(losses)
    assert all(t["state"] == "complete" for t in info["trials"])
    for t in info["trials"]:  # each trial really trained with its loss
        run = api(stack, "GET", f"/api/v1/runs/{t['run_id']}")
        assert run["spec"]["loss_type"] == t["params"]["loss_type"] and run["run"]["status"] == "succeeded"


def test_kill_9_of_the_sweeps_service_resumes_without_running_a_trial_twice(stack: ProcessStack) -> None:
    sweep_id = create(stack, sft_sweep(stack, name="killed", sampler="random", n_trials=4), "killed")
    sweeps_proc = next(p for p in stack.procs if p.args[-1] == "halo_sweeps" and p.poll() is None)
    deadline = time.monotonic() + 300
    while True:  # one trial done, the next one running
        info = api(stack, "GET", f"/api/v1/sweeps/{sweep_id}")
        if info["counts"].get("complete", 0) >= 1 and info["counts"].get("running", 0) >= 1:
            break
        assert time.monotonic() < deadline, stack.logs()[-3000:]
        time.sleep(0.3)
    os.kill(sweeps_proc.pid, signal.SIGKILL)
    sweeps_proc.wait(10)
    stack.procs.append(stack._spawn("halo_sweeps"))
    info = wait_done(stack, sweep_id)
    trials = info["trials"]
    assert len(trials) == 4 and all(t["state"] == "complete" for t in trials)
    jobs = api(stack, "GET", "/api/v1/jobs", params={"job_type": "sft", "limit": 1000})["jobs"]
    mine = [j for j in jobs if j["run_id"] in {t["run_id"] for t in trials}]
    assert len(mine) == 4 and all(j["attempt"] == 1 and j["state"] == "succeeded" for j in mine)
    runs = api(stack, "GET", "/api/v1/runs", params={"tag": f"sweep:{sweep_id}", "limit": 50})["items"]
    assert len(runs) == 4  # no fifth run: nothing was submitted twice
    coordinator = api(stack, "GET", f"/api/v1/jobs/{info['job_id']}")
    assert coordinator["attempt"] == 2  # the same coordinator job, redelivered


def test_an_eval_objective_scores_each_trial_with_the_eval_service(stack: ProcessStack) -> None:
    spec = sft_sweep(stack, name="eval", sampler="random", n_trials=2, objective={
        "metric": "eval:halo_arith_mc:acc_norm", "direction": "maximize", "eval": {"limit": 4, "batch_size": 4}})
    spec["base"]["max_steps"] = 4
    sweep_id = create(stack, spec, "eval")
    info = wait_done(stack, sweep_id, timeout=600)
    trials = info["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete"], trials
    # Each trial's value is what the eval service measured on the trial's run and recorded in the registry
    # (acc_norm is not halo_arith_mc's primary metric: it comes from the full lm-eval summary).
    grid = api(stack, "GET", "/api/v1/runs/grid", params={
        "ids": ",".join(t["run_id"] for t in trials), "tasks": "halo_arith_mc", "metric": "acc_norm"})
    cells = {c["run_id"]: c for c in grid["cells"] if c["task"] == "halo_arith_mc" and c["metric"] == "acc_norm"}
    for t in trials:
        assert t["value"] == cells[t["run_id"]]["value"] and cells[t["run_id"]]["num_samples"] == 4
    assert info["best"]["value"] == max(t["value"] for t in trials)
    evals = api(stack, "GET", "/api/v1/jobs", params={"job_type": "lm-eval", "limit": 1000})["jobs"]
    assert len(evals) == 2 and {j["state"] for j in evals} == {"succeeded"}
    shown = stack.cli("sweep", "show", sweep_id)
    assert shown.returncode == 0 and "eval:halo_arith_mc:acc_norm (maximize)" in shown.stdout, shown.stderr


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"search_space": {"lora.rnk": {"type": "int", "low": 2, "high": 8}}}, "search_space.lora.rnk",
     "has no field 'lora.rnk'"),
    ({"search_space": {"learning_rate": {"type": "float", "low": 0.01, "high": 0.001}}}, "search_space.learning_rate",
     "empty range"),
    ({"objective": {"metric": "reward_accuracy"}}, "objective.metric", "sft never reports 'reward_accuracy'"),
    ({"objective": {"metric": "eval:halo_arith_mcc", "direction": "maximize"}}, "objective.metric",
     "unknown task 'halo_arith_mcc'; close matches: halo_arith_mc"),
    ({"objective": {"metric": "eval:offline", "direction": "maximize"}}, "objective.metric",
     "'offline' is a group of 4 tasks"),
])
def test_bad_input_is_refused_before_any_trial(stack: ProcessStack, change: dict[str, Any], field: str,
                                               message: str) -> None:
    before = len(api(stack, "GET", "/api/v1/jobs", params={"limit": 1000})["jobs"])
    sweeps_before = len(api(stack, "GET", "/api/v1/sweeps")["sweeps"])
    path = stack.root / "bad.yaml"
    path.write_text(yaml.safe_dump(sft_sweep(stack, **change)))
    r = stack.cli("sweep", "create", str(path))
    assert r.returncode == 1 and field in r.stderr and message in r.stderr, r.stdout + r.stderr
    assert len(api(stack, "GET", "/api/v1/jobs", params={"limit": 1000})["jobs"]) == before
    assert len(api(stack, "GET", "/api/v1/sweeps")["sweeps"]) == sweeps_before
