"""The dashboard in a real browser (Debian's Chromium, headless, driven by Playwright) against a real stack:
nats-server, gateway, registry and trainer-torch as processes. Each test saves a screenshot in its tmp dir.

Launch a tiny SFT from the Train form (generated from the spec's JSON Schema) and watch its curve grow live
(its event log end with the finish, its Log card show the trainer's logs/train.log);
cancel a run; compare two runs with the differing config keys highlighted; the cohort grid with the best cell
marked; and signing in to a gateway bound to a non-loopback address in a network namespace the test makes —
denied without the token, allowed with it, SSE included."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from halo_testing import wait_until
from halo_testing.browser import CHROMIUM, needs_chromium
from halo_testing.stack import ProcessStack

pytestmark = [
    pytest.mark.integration, pytest.mark.slow,
    needs_chromium,
]

RECORDS = [{"messages": [{"role": "user", "content": f"What does a {a} say?"},
                         {"role": "assistant", "content": f"A {a} says {s}."}]}
           for a, s in [("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("owl", "hoot")]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    s = ProcessStack(tmp_path_factory.mktemp("dashboard"), ["halo_gateway", "halo_registry", "halo_trainer_torch"],
                     ready={"registry", "trainer-torch"}, env={"HALO_TRAINER_TORCH_STATUS_INTERVAL_S": "0.5"})
    yield s
    s.close()


@pytest.fixture(scope="module")
def data(stack: ProcessStack) -> Path:
    path = stack.root / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def spec(data: Path, **extra: Any) -> dict[str, Any]:
    return {"model": "tiny://llama", "data": {"train": str(data)}, "batch_size": 2, "max_length": 64,
            "log_every_steps": 1, "progress_interval_s": 0, **extra}


def submit(stack: ProcessStack, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{stack.url}/api/v1/jobs/sft", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def run_status(stack: ProcessStack, run_id: str) -> str | None:
    r = httpx.get(f"{stack.url}/api/v1/runs/{run_id}", timeout=10)
    return r.json()["run"]["status"] if r.status_code == 200 else None


def test_launch_sft_from_the_train_form_and_watch_the_curve_grow(stack: ProcessStack, data: Path, page: Any) -> None:
    page.goto(f"{stack.url}/#/train")
    page.locator('[name="model"]').fill("tiny://llama")
    page.locator('[name="data.train"]').fill(str(data))
    for name, value in {"max_steps": "40", "batch_size": "2", "max_length": "64", "progress_interval_s": "0",
                        "name": "from-the-form"}.items():
        page.locator(f'[name="{name}"]').fill(value)
    page.get_by_test_id("preview").click()
    result = page.get_by_test_id("preview-result")
    result.wait_for(timeout=120_000)
    assert "Spec and data are valid" in result.inner_text() and "5 training records" in result.inner_text()

    page.get_by_test_id("launch").click()
    page.wait_for_url("**/#/runs/run-*", timeout=60_000)
    run_id = page.url.rsplit("/", 1)[-1]
    chart = page.get_by_test_id("chart-loss")
    chart.wait_for(timeout=120_000)
    seen: list[int] = []

    def finished() -> bool:
        seen.append(int(chart.get_attribute("data-points") or 0))
        return page.get_by_test_id("run-state").inner_text() == "succeeded"

    wait_until(finished, timeout=240, interval=0.2, what="the run page to show the run succeeded")
    distinct = sorted(set(seen))
    assert len(distinct) >= 3, f"the loss curve did not grow live: point counts seen {distinct}"
    assert distinct[-1] >= 40 - 1 and seen == sorted(seen)  # grew monotonically to every logged step
    assert "40 / 40" in page.get_by_test_id("run-step").inner_text()
    log = page.get_by_test_id("event-log").inner_text()  # the event log's tail: progress lines, then the finish
    assert "progressed" in log and "loss=" in log and "step 40" in log and log.rstrip().endswith("succeeded")
    page.get_by_test_id("artifacts").wait_for(timeout=30_000)  # registry detail arrived: artifacts, evals, cost
    # the registry ingests the finish from the event stream on its own schedule: the page saw it first
    wait_until(lambda: run_status(stack, run_id) == "succeeded", timeout=30, interval=0.2,
               what="the registry to record the run as succeeded")
    run_log = page.get_by_test_id("run-log")  # the tail of the trainer's logs/train.log, fetched again at the finish
    wait_until(lambda: f"run {run_id}: attempt 1 ended succeeded" in run_log.inner_text(), timeout=30, interval=0.2,
               what="the Log card to show the trainer's end-of-attempt line")
    assert f"run {run_id}: sft attempt 1 started" in run_log.inner_text()
    assert "halo_training.metrics: step 40 · loss " in run_log.inner_text()  # training, line by line


def test_cancel_a_run_from_its_page(stack: ProcessStack, data: Path, page: Any) -> None:
    job = submit(stack, spec(data, max_steps=5000, name="to-cancel"))
    page.goto(f"{stack.url}/#/runs/{job['run_id']}")
    wait_until(lambda: page.get_by_test_id("run-state").inner_text() == "running", timeout=120, interval=0.2,
               what="the run to be running")
    page.get_by_test_id("cancel").click()
    wait_until(lambda: page.get_by_test_id("run-state").inner_text() == "cancelled", timeout=120, interval=0.3,
               what="the page to show the run cancelled")
    wait_until(lambda: run_status(stack, job["run_id"]) == "cancelled", timeout=60, what="the registry to record it")


@pytest.fixture(scope="module")
def two_runs(stack: ProcessStack, data: Path) -> list[str]:
    ids = [submit(stack, spec(data, max_steps=6, learning_rate=lr, name=f"lr-{lr}"))["run_id"]
           for lr in (0.001, 0.0002)]
    for run_id in ids:
        wait_until(lambda run_id=run_id: run_status(stack, run_id) == "succeeded", timeout=300,
                   what=f"{run_id} to succeed")
    return ids


def test_compare_two_runs_highlights_the_differing_config_keys(stack: ProcessStack, two_runs: list[str],
                                                                 page: Any) -> None:
    page.goto(f"{stack.url}/#/runs")
    for run_id in two_runs:
        page.locator(f'tr[data-run="{run_id}"] input[type="checkbox"]').check()
    page.get_by_test_id("compare-selected").click()
    page.get_by_test_id("config-diff").wait_for(timeout=30_000)
    row = page.locator('tr[data-key="learning_rate"]')
    assert "differs" in (row.get_attribute("class") or "")
    assert "0.001" in row.inner_text() and "0.0002" in row.inner_text()
    keys = page.locator("[data-testid=config-diff] tr[data-key]").evaluate_all("rows => rows.map(r => r.dataset.key)")
    assert "model" not in keys and "batch_size" not in keys  # identical keys are not listed as differing
    chart = page.get_by_test_id("compare-chart-loss")
    chart.wait_for()
    assert int(chart.get_attribute("data-points")) >= 2 * 6 - 2


def test_cohort_grid_marks_the_best_cell(stack: ProcessStack, two_runs: list[str], page: Any) -> None:
    task = f"quiz-{uuid.uuid4().hex[:6]}"
    for run_id, value in zip(two_runs, (0.4, 0.7), strict=True):
        r = httpx.post(f"{stack.url}/api/v1/runs/{run_id}/evals", timeout=10, json={
            "source": "test", "results": [{"task": task, "metric": "accuracy", "value": value}]})
        assert r.status_code == 200, r.text
    page.goto(f"{stack.url}/#/evaluate")
    page.get_by_test_id("grid").locator(f'td[data-task="{task}"]').first.wait_for(timeout=30_000)
    best = page.locator(f'td[data-task="{task}"][data-best="1"]')
    assert best.count() == 1 and best.get_attribute("data-run") == two_runs[1] and "★" in best.inner_text()
    assert "best" in (best.get_attribute("class") or "")
    assert page.locator(f'td[data-task="{task}"][data-best="0"]').get_attribute("data-run") == two_runs[0]


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("making a network namespace needs root and iproute2")
    name = f"halo-dash-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        # A documentation address (TEST-NET-1) on the namespace's own loopback device: not a loopback
        # address to the gateway, so it counts as exposed; nothing leaves the namespace.
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"]):
            subprocess.run(["ip", "netns", "exec", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_sign_in_to_a_gateway_on_a_non_loopback_address(netns: str, tmp_path: Path) -> None:
    script = Path(__file__).with_name("dashboard_remote.py")
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, str(script), "192.0.2.1", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "HALO_CHROMIUM": CHROMIUM})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["locked_page"] == "Connection" and seen["after_sign_in"] == "Runs"
    assert seen["api_without_token"] == 401 and seen["sse_without_token"] == "error"
    assert "not accepted" in seen["wrong_token_error"]
    assert seen["cookies"]["halo_session"] == {"httpOnly": True, "sameSite": "Strict"}
    assert seen["cookies"]["halo_csrf"]["httpOnly"] is False
    assert seen["api_with_session"] == 200 and seen["sse_with_session"] == "message:cpu"
    assert seen["post_without_csrf"] == 403
    assert "utilisation" in seen["strip"]
    assert seen["api_after_sign_out"] == 401
    assert (tmp_path / "signed-in.png").stat().st_size > 0 and (tmp_path / "signed-out.png").stat().st_size > 0
