"""The eval service on the in-memory bus: checks refuse bad input by name; an lm-eval job gives the same
numbers as lm-eval's own CLI on the offline suite (hf backend, tiny model) and writes its files."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from halo_bus import InMemoryBus, subjects
from halo_clients.eval import EvalClient
from halo_common.errors import BadRequest, NotFound
from halo_eval.core.tasks import SUITE_DIR
from halo_eval.service import Eval
from halo_eval.settings import EvalSettings
from halo_schemas.eval import EvalJobSpec
from halo_schemas.jobs import JobState, JobStatus


@pytest.fixture
async def service(memory_bus: InMemoryBus, tmp_path: Path) -> AsyncIterator[Eval]:
    svc = Eval(EvalSettings(home=tmp_path / "home", record_wait_s=0), memory_bus)
    await svc.start()
    yield svc
    await svc.stop()


async def test_check_names_bad_input(service: Eval, memory_bus: InMemoryBus, tiny_model_dir: Path,
                                     tmp_path: Path) -> None:
    ev = EvalClient(memory_bus)
    with pytest.raises(BadRequest) as err:
        await ev.check(tasks=["halo_arith_mcq"])
    assert err.value.param == "tasks" and "unknown task 'halo_arith_mcq'" in err.value.message
    assert "halo_arith_mc" in err.value.message                     # close matches listed
    with pytest.raises(NotFound) as nf:
        await ev.check(tasks=["offline"], model=str(tmp_path / "no-such-model"))
    assert nf.value.param == "model" and "does not exist" in nf.value.message
    with pytest.raises(NotFound, match="not in the local Hugging Face cache"):
        await ev.check(model="nobody/no-such-model-xyz")
    with pytest.raises(NotFound, match="run:run-missing"):
        await ev.check(model="run:run-missing")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(BadRequest, match="is empty"):
        await ev.check(dataset=str(empty))
    ok = await ev.check(tasks=["offline"], model=str(tiny_model_dir), dataset="humaneval")
    assert ok.tasks == ["halo_offline"] and ok.model["pretrained"] == str(tiny_model_dir) and ok.problems == 164


async def test_unknown_job_type_and_invalid_spec_fail_the_job(service: Eval, memory_bus: InMemoryBus) -> None:
    from halo_runtime.jobs import submit_job

    sub = await submit_job(memory_bus, service="eval", job_type="passk",
                           spec=EvalJobSpec(model="m", tasks=["offline"]))  # wrong spec for the type
    for _ in range(100):
        st = await memory_bus.kv_get(subjects.KV_JOB_STATE, sub.job_id, JobStatus)
        if st and st.state.terminal:
            break
        await asyncio.sleep(0.05)
    assert st is not None and st.state == JobState.FAILED and "passk spec" in (st.error or "")


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_same_numbers_as_lm_eval_cli(service: Eval, memory_bus: InMemoryBus, tiny_model_dir: Path,
                                           tmp_path: Path) -> None:
    ev = EvalClient(memory_bus)
    sub = await ev.submit_eval(EvalJobSpec(model=str(tiny_model_dir), tasks=["offline"], limit=8, batch_size=4,
                                           record=False))
    final = await ev.wait(sub, timeout=900)
    assert final.state == JobState.SUCCEEDED, final.error
    out = service.settings.paths.run_dir(sub.run_id) / "eval"
    summary = json.loads((out / "lm_eval_summary.json").read_text())
    assert (out / "lm_eval_results.json").is_file()
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "halo_arith_gen.jsonl", "halo_arith_mc.jsonl", "halo_code_output.jsonl", "halo_compare_mc.jsonl"]
    tasks = summary["tasks"]
    assert set(tasks) == {"halo_arith_mc", "halo_compare_mc", "halo_arith_gen", "halo_code_output"}
    for t in tasks.values():
        assert t["n"] == 8 and t["num_fewshot"] == 0 and t["task_hash"] and t["version"] == 1.0
    assert tasks["halo_arith_mc"]["primary_metric"] == "acc" and "acc_norm" in tasks["halo_arith_mc"]["metrics"]
    assert tasks["halo_arith_gen"]["primary_metric"] == "exact_match"
    assert summary["lm_eval_version"] and final.summary["tasks"]["halo_arith_mc"]["value"] == tasks["halo_arith_mc"]["value"]

    # lm-eval's own CLI, same model, same flags
    args = ",".join(f"{k}={v}" for k, v in summary["lm_eval_model_args"].items())
    seed = summary["seed"]
    cli_out = tmp_path / "cli"
    lm_eval = Path(sys.executable).with_name("lm_eval")
    proc = await asyncio.to_thread(subprocess.run, [
        str(lm_eval), "--model", "hf", "--model_args", args, "--include_path", str(SUITE_DIR),
        "--tasks", "halo_offline", "--limit", "8", "--batch_size", "4", "--device", summary["device"],
        "--seed", f"{seed},{seed},{seed},{seed}", "--output_path", str(cli_out), "--log_samples"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_DATASETS_OFFLINE": "1"}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [results_file] = list(cli_out.rglob("results_*.json"))
    cli_raw = json.loads(results_file.read_text())
    cli = cli_raw["results"]
    assert {k: t["task_hash"] for k, t in tasks.items()} == cli_raw["task_hashes"]
    for task, t in tasks.items():
        for name, m in t["metrics"].items():
            metric = name.split(",")[0]
            assert cli[task][f"{metric},{m['filter']}"] == m["value"], (task, name)
            assert cli[task][f"{metric}_stderr,{m['filter']}"] == m["stderr"], (task, name)
