"""The dashboard's Sweeps and Models pages in a real browser (Debian's Chromium, headless, driven by Playwright)
against a real stack: nats-server, gateway, registry, trainer-torch, sweeps and serve as processes. Each test
saves a screenshot in its tmp dir.

* Sweeps: a two-trial grid sweep of a tiny SFT is listed, and its page shows both trials with their parameter
  and objective value, the best (lowest loss) trial marked.
* Models: the served model is listed; the playground streams a reply from it (loading it); unloading it from the
  page unloads it in serve. A convert job submitted from the Convert form shows its progress and then its
  output and verify result; one with a missing source shows the job's error. A tiny trained adapter combined
  with itself (linear 0.5/0.5) from the Merge: combine form shows the output and status; a missing adapter shows
  the error.
* Run detail of a real tiny RAFT run (trainer-torch, ``verifier_transport: local``): the cycle / total and the
  last finished stage, the per-cycle table from the summary and the before/after samples."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from halo_testing import wait_until
from halo_testing.browser import needs_chromium
from halo_testing.stack import ProcessStack

pytestmark = [
    pytest.mark.integration, pytest.mark.slow,
    needs_chromium,
]

RECORDS = [{"messages": [{"role": "user", "content": f"What does a {a} say?"},
                         {"role": "assistant", "content": f"A {a} says {s}."}]}
           for a, s in [("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("owl", "hoot")]]
RL_DATA = Path(__file__).resolve().parents[2] / "services/trainer-torch/src/halo_trainer_torch/data"
TAG_VERIFIER = {"name": "regex_format", "params": {"patterns": ["^<answer>", "</answer>$", "^<answer>[a-z]+</answer>$"]}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[ProcessStack]:
    s = ProcessStack(tmp_path_factory.mktemp("dashboard-pages"),
                     ["halo_gateway", "halo_registry", "halo_trainer_torch", "halo_sweeps", "halo_serve"],
                     ready={"registry", "trainer-torch", "sweeps", "serve"},
                     env={"HALO_TRAINER_TORCH_STATUS_INTERVAL_S": "0.5", "HALO_TRAINER_TORCH_JOB_TYPES": "sft,raft",
                          "HALO_SWEEPS_JOB_ACK_WAIT_S": "4", "HALO_SWEEPS_POLL_S": "1",
                          "HALO_SWEEPS_STATUS_INTERVAL_S": "1",
                          "HALO_SERVE_MODELS": json.dumps([f"tiny={tiny_model_dir}"])})
    (s.root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    yield s
    s.close()


def api(stack: ProcessStack, method: str, path: str, **kw: Any) -> Any:
    r = httpx.request(method, stack.url + path, timeout=60, **kw)
    assert r.status_code < 300, r.text
    return r.json()


def test_sweeps_page_lists_the_sweep_and_marks_the_best_trial(stack: ProcessStack, page: Any) -> None:
    started = api(stack, "POST", "/api/v1/sweeps", json={
        "name": "dash-grid", "method": "sft", "sampler": "grid", "n_trials": 2,
        "base": {"model": "tiny://llama", "data": {"train": str(stack.root / "chat.jsonl")}, "max_steps": 3,
                 "batch_size": 2, "max_length": 64, "checkpoint_every_steps": 1000},
        "search_space": {"learning_rate": {"type": "categorical", "choices": [0.001, 0.03]}}})
    sweep_id = started["sweep_id"]
    deadline = time.monotonic() + 400
    while (info := api(stack, "GET", f"/api/v1/sweeps/{sweep_id}"))["state"] not in ("succeeded", "failed",
                                                                                      "cancelled"):
        assert time.monotonic() < deadline, stack.logs()[-4000:]
        time.sleep(1)
    assert info["state"] == "succeeded" and info["best"] is not None, info
    assert info["best"]["value"] == min(t["value"] for t in info["trials"])  # minimize loss

    page.goto(f"{stack.url}/#/sweeps")
    row = page.locator(f'tr[data-sweep="{sweep_id}"]')
    row.wait_for(timeout=30_000)
    assert "dash-grid" in row.inner_text() and "2 complete" in row.inner_text()
    row.get_by_role("link").click()
    page.wait_for_url(f"**/#/sweeps/{sweep_id}")
    trials = page.get_by_test_id("sweep-trials").locator("tr[data-trial]")
    trials.first.wait_for(timeout=30_000)
    assert trials.count() == 2
    best = page.locator('tr[data-trial][data-best="1"]')
    assert best.count() == 1 and best.get_attribute("data-trial") == str(info["best"]["number"])
    cell = page.get_by_test_id("best-trial-value")
    assert "★" in cell.inner_text() and "best" in (cell.get_attribute("class") or "")
    shown = {t["number"]: page.locator(f'tr[data-trial="{t["number"]}"]').inner_text() for t in info["trials"]}
    for t in info["trials"]:  # each trial's parameter and a value, never "unavailable" for a complete trial
        assert str(t["params"]["learning_rate"]) in shown[t["number"]] and "unavailable" not in shown[t["number"]]
    assert page.get_by_test_id("sweep-state").inner_text() == "succeeded"


def test_models_page_lists_streams_from_and_unloads_the_served_model(stack: ProcessStack, page: Any) -> None:
    page.goto(f"{stack.url}/#/models")
    row = page.get_by_test_id("served").locator('tr[data-model="tiny"]')
    row.wait_for(timeout=30_000)
    assert "hf" in row.inner_text() and "transformers" in row.inner_text()
    playground = page.get_by_test_id("playground")
    playground.locator("select").select_option("tiny")
    playground.locator('input[placeholder="Say something"]').fill("What does a cow say?")
    playground.get_by_role("button", name="Send").click()
    reply = playground.locator('.msg[data-role="assistant"]').last
    wait_until(lambda: len(reply.inner_text().removeprefix("assistant").strip()) > 0, timeout=120, interval=0.2,
               what="the playground to show a streamed reply")
    # The list is refreshed when the stream ends: the model was loaded to answer.
    loaded = row.get_by_test_id("model-loaded")
    wait_until(lambda: loaded.inner_text() == "yes", timeout=60, interval=0.2, what="the model to show as loaded")
    assert not page.get_by_role("alert").count()
    row.get_by_role("button", name="Unload").click()
    wait_until(lambda: loaded.inner_text() == "no", timeout=60, interval=0.2, what="the page to show it unloaded")
    models = {m["id"]: m for m in api(stack, "GET", "/api/v1/serve/models")["models"]}
    assert models["tiny"]["loaded"] is False


def test_run_page_shows_raft_cycles_stages_and_samples(stack: ProcessStack, page: Any) -> None:
    prompts = ["Answer in tags: the colour of the sky", "Answer in tags: a farm animal"]
    submitted = api(stack, "POST", "/api/v1/jobs/raft", json={
        "model": "tiny://llama", "data": {"train": str(RL_DATA / "rl_tags_train.jsonl")}, "verifiers": [TAG_VERIFIER],
        "verifier_transport": "local", "finetune": "full", "cycles": 2, "prompts_per_cycle": 4, "batch_size": 4,
        "num_generations": 2, "max_new_tokens": 8, "eval_num_generations": 1, "max_length": 64, "dtype": "float32",
        "reward_threshold": 0.0, "keep_top_fraction": 1.0, "sample_prompts": prompts, "sample_max_new_tokens": 4,
        "name": "dash-raft"})
    run_id = submitted["run_id"]
    page.goto(f"{stack.url}/#/runs/{run_id}")
    raft = page.get_by_test_id("raft")
    raft.wait_for(timeout=120_000)
    stage = raft.get_by_test_id("raft-stage")
    # A stage row arrived (live, or from the stored metrics when the run was quicker than the page).
    wait_until(lambda: "unavailable" not in stage.inner_text(), timeout=240, interval=0.2,
               what="the RAFT widget to name a finished stage")
    assert any(s in stage.inner_text() for s in ("generate", "verify", "select", "train"))
    wait_until(lambda: page.get_by_test_id("run-state").inner_text() in ("succeeded", "failed"), timeout=300,
               interval=0.5, what="the RAFT run to finish")
    assert page.get_by_test_id("run-state").inner_text() == "succeeded", stack.logs()[-4000:]
    table = page.get_by_test_id("raft-cycles")
    table.wait_for(timeout=30_000)  # the summary arrived with the registry's detail
    detail = api(stack, "GET", f"/api/v1/runs/{run_id}")
    rows = detail["summary"]["extras"]["cycles"]
    assert [int(c) for c in table.locator("tr[data-cycle]").evaluate_all("rs => rs.map(r => r.dataset.cycle)")] == \
        [r["cycle"] for r in rows] == [1, 2]
    for r in rows:  # each cycle's kept count as the summary has it (unavailable when the summary has none)
        kept = table.locator(f'tr[data-cycle="{r["cycle"]}"]').get_by_test_id("raft-kept").inner_text()
        assert kept == (str(r["kept"]) if r["kept"] is not None else "unavailable")
    assert raft.get_by_test_id("raft-cycle").inner_text() == "cycle 2 / 2"
    assert "train" in stage.inner_text() and raft.locator('[data-stage][data-done="1"]').count() == 4
    samples = page.get_by_test_id("samples").get_by_test_id("sample-row")
    assert samples.count() == len(prompts)
    for i, s in enumerate(detail["summary"]["extras"]["samples"]):
        text = samples.nth(i).inner_text()
        assert s["prompt"] in text and s["after"].strip()[:10] in text


def test_models_page_converts_a_model_and_shows_the_result_or_the_error(stack: ProcessStack, page: Any,
                                                                        tiny_model_dir: Path,
                                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    from halo_serve.core.convert.testing import confident_copy

    source = confident_copy(tiny_model_dir, tmp_path_factory.mktemp("convert-src") / "tiny")
    formats = api(stack, "GET", "/api/v1/convert/formats")["formats"]
    fmt, quant = ("gguf", "fp32") if formats["gguf"]["fp32"] is None else ("hf", "fp16")  # gguf needs llama.cpp
    out = stack.home / "models" / ("dash-tiny.gguf" if fmt == "gguf" else "dash-tiny")
    page.goto(f"{stack.url}/#/models")
    card = page.get_by_test_id("convert")
    card.locator('[name="source"]').fill(str(source))
    card.locator('select[name="format"]').select_option(fmt)
    card.locator('select[name="quant"]').select_option(quant)
    card.locator('[name="out"]').fill(str(out))
    card.get_by_test_id("convert-submit").click()
    job = card.get_by_test_id("convert-job")
    job.wait_for(timeout=30_000)
    wait_until(lambda: job.get_attribute("data-state") in ("succeeded", "failed", "cancelled"), timeout=240,
               interval=0.2, what="the convert job to finish on the page")
    assert job.get_attribute("data-state") == "succeeded", (job.inner_text(), stack.logs()[-4000:])
    assert job.get_by_test_id("job-output").inner_text() == str(out) and out.exists()
    assert job.get_by_test_id("job-status").inner_text() == "verified"
    assert job.get_by_test_id("job-verify").inner_text().startswith("passed")
    arts = api(stack, "GET", f"/api/v1/artifacts?format={fmt}")["artifacts"]
    assert any(a["path"] == str(out) and a["quant"] == quant for a in arts)

    # Errors show the API's (or the failed job's) own message: the same output again, then a missing source.
    alert = card.get_by_role("alert")
    card.get_by_test_id("convert-submit").click()
    wait_until(lambda: alert.count() > 0 and "already exists" in alert.first.inner_text(), timeout=120, interval=0.2,
               what="the page to say the output exists")
    card.locator('[name="out"]').fill("")
    card.locator('[name="source"]').fill(str(stack.root / "no-such-model"))
    card.get_by_test_id("convert-submit").click()
    wait_until(lambda: alert.count() > 0 and "no-such-model" in alert.first.inner_text(), timeout=120, interval=0.2,
               what="the page to show the bad convert's error")


def _tiny_adapter(base: Path, out: Path, steps: int = 4) -> Path:
    """A LoRA adapter over the tiny llama trained for a few steps on a seeded random batch (a real update, ~1 s)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    ids = torch.randint(3, model.config.vocab_size, (2, 16))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    return out


def test_models_page_combines_adapters_and_shows_the_result_or_the_error(stack: ProcessStack, page: Any,
                                                                         tiny_model_dir: Path) -> None:
    adapter = _tiny_adapter(tiny_model_dir, stack.home / "adapters" / "dash-a")
    out = stack.home / "models" / "dash-combined"
    page.goto(f"{stack.url}/#/models")
    card = page.get_by_test_id("combine")
    card.locator('[name="adapters"]').fill(f"{adapter}\n{adapter}")
    card.locator('select[name="method"]').select_option("linear")
    assert card.locator('[name="density"]').is_disabled()  # density is for ties | dare_* | magnitude_prune
    card.locator('[name="weights"]').fill("0.5, 0.5")
    card.locator('[name="out"]').fill(str(out))
    card.get_by_test_id("combine-submit").click()
    job = card.get_by_test_id("combine-job")
    job.wait_for(timeout=30_000)
    wait_until(lambda: job.get_attribute("data-state") in ("succeeded", "failed", "cancelled"), timeout=240,
               interval=0.2, what="the combine job to finish on the page")
    assert job.get_attribute("data-state") == "succeeded", (job.inner_text(), stack.logs()[-4000:])
    assert job.get_by_test_id("job-output").inner_text() == str(out)
    assert (out / "adapter_config.json").exists() and (out / "halo_artifact.json").exists()
    manifest = json.loads((out / "halo_artifact.json").read_text())
    assert job.get_by_test_id("job-status").inner_text() == manifest["status"]
    assert manifest["kind"] == "adapter" and manifest["spec"]["weights"] == [0.5, 0.5]
    assert "adapter / peft" in job.get_by_test_id("job-result").inner_text()
    assert not card.get_by_role("alert").count()

    # A missing adapter: the page shows the API's (or the failed job's) message naming it.
    card.locator('[name="adapters"]').fill(f"{adapter}\n{stack.root / 'no-such-adapter'}")
    card.locator('[name="out"]').fill("")
    card.get_by_test_id("combine-submit").click()
    alert = card.get_by_role("alert")
    wait_until(lambda: alert.count() > 0 and "no-such-adapter" in alert.first.inner_text(), timeout=120, interval=0.2,
               what="the page to show the bad combine's error")
