"""The rollout service over a real nats-server: RPCs that serve every policy update, jobs followed
through the gateway and the run's events, and the reward workbench end to end
(CLI -> gateway over HTTP -> rollout + verifier-sandbox services over NATS)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import torch
from halo_bus import NatsBus, subjects
from halo_common.natsproc import free_port
from halo_gateway.app import create_app
from halo_gateway.settings import GatewaySettings
from halo_rollout.service import Rollout
from halo_rollout.settings import RolloutSettings
from halo_sampling.backends.transformers_backend import TransformersBackend
from halo_schemas.rollout import (
    RolloutLoaded,
    RolloutLoadRequest,
    RolloutRequest,
    RolloutResult,
    SampleParams,
    SampleRequest,
)
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.integration

GREEDY = SampleParams(temperature=0, max_new_tokens=10)
PROMPTS = ["hello", "The quick brown fox", "Once upon a time"]


@pytest.fixture
async def rollout(nats_bus: NatsBus, tiny_model_dir: Path, tmp_path: Path) -> AsyncIterator[Rollout]:
    svc = Rollout(RolloutSettings(default_model=str(tiny_model_dir), home=tmp_path / "home", progress_interval_s=0),
                  nats_bus)
    await svc.start()
    yield svc
    await svc.stop()


def write_new_policy(model_dir: Path, seed: int) -> None:
    """What a trainer does after an update: overwrite the weights in its output directory."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(seed)))
    model.save_pretrained(model_dir)


async def test_rpc_serves_the_policy_written_after_each_update(rollout: Rollout, nats_bus: NatsBus,
                                                               tiny_model_dir: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    shutil.copytree(tiny_model_dir, policy)
    req = RolloutRequest(model=str(policy), params=GREEDY, requests=[SampleRequest(prompt=p) for p in PROMPTS])
    first = await nats_bus.request(subjects.ROLLOUT_GENERATE, req, RolloutResult, timeout=120)
    assert first.weights_version == 0 and first.num_samples == 3

    seen = [first]
    for version, seed in ((1, 11), (2, 12)):
        write_new_policy(policy, seed)
        res = await nats_bus.request(subjects.ROLLOUT_GENERATE, req, RolloutResult, timeout=120)
        assert res.weights_version == version and res.weights_fingerprint != seen[-1].weights_fingerprint
        fresh = TransformersBackend()
        fresh.load(str(policy))
        expected = fresh.generate(req.requests, GREEDY)
        assert [r.completions[0].token_ids for r in res.results] == [r.completions[0].token_ids for r in expected]
        assert [r.completions[0].token_ids for r in res.results] != [r.completions[0].token_ids for r in seen[-1].results]
        seen.append(res)

    loaded = await nats_bus.request(subjects.ROLLOUT_LOAD, RolloutLoadRequest(model=str(policy), reload=True),
                                    RolloutLoaded, timeout=120)
    assert loaded.action == "updated" and loaded.weights_version == 3


async def test_job_via_gateway_writes_jsonl_and_reports_it_in_events(rollout: Rollout, nats_bus: NatsBus,
                                                                     tiny_model_dir: Path) -> None:
    app = create_app(nats_bus, GatewaySettings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1", timeout=120) as c:
        spec = {"model": str(tiny_model_dir), "chunk_size": 2, "seed": 5,
                "params": {"n": 3, "temperature": 1.0, "max_new_tokens": 6},
                "requests": [{"prompt": f"prompt {i}"} for i in range(5)]}
        r = await c.post("/api/v1/rollout/jobs", json=spec)
        assert r.status_code == 202, r.text
        job_id, run_id = r.json()["job_id"], r.json()["run_id"]
        for _ in range(300):
            status = (await c.get(f"/api/v1/rollout/jobs/{job_id}")).json()
            if status["state"] in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.1)
        assert status["state"] == "succeeded", status
        assert status["step"] == 5 and status["total_steps"] == 5

        # Typos are refused by name, top level and nested.
        bad = await c.post("/api/v1/rollout/generate", json={"requests": [{"prompt": "a"}], "adaptor": "x"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "adaptor"
        bad = await c.post("/api/v1/rollout/jobs", json={**spec, "params": {"temprature": 1}})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "params.temprature"
        assert (await c.get("/api/v1/rollout/jobs/job-nope")).status_code == 404
        ok = await c.post("/api/v1/rollout/generate", json={"params": {"temperature": 0, "max_new_tokens": 4},
                                                            "requests": [{"prompt": "hello"}]})
        assert ok.status_code == 200 and ok.json()["results"][0]["completions"][0]["num_tokens"] == 4

    events = await nats_bus.replay(subjects.run_events_filter(run_id))
    names = [e.subject.rsplit(".", 1)[1] for e in events]
    assert names[0] == "started" and names[-2:] == ["artifact-added", "finished"] and "progressed" in names
    assert [e.message.seq for e in events] == list(range(1, len(events) + 1))
    artifact, finished = events[-2].message, events[-1].message
    out = Path(artifact.path)
    assert out == rollout.settings.paths.run_dir(run_id) / "samples.jsonl" and artifact.format == "jsonl"
    lines = [json.loads(x) for x in out.read_text().splitlines()]  # noqa: ASYNC240
    assert [x["index"] for x in lines] == [0, 1, 2, 3, 4] and all(len(x["completions"]) == 3 for x in lines)
    assert finished.state == "succeeded" and finished.summary["samples"] == 15 and finished.summary["output"] == str(out)


@pytest.fixture
async def gateway_url(nats_bus: NatsBus) -> AsyncIterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(nats_bus, GatewaySettings()), host="127.0.0.1", port=port,
                                           log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def test_reward_workbench_dry_run_end_to_end(rollout: Rollout, nats_bus: NatsBus, gateway_url: str,
                                                   tiny_model_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("halo_verifier_sandbox.service")
    from halo_forge.main import app
    from halo_verifier_sandbox.service import VerifierSandbox
    from halo_verifier_sandbox.settings import VerifierSandboxSettings
    from typer.testing import CliRunner

    verifier = VerifierSandbox(VerifierSandboxSettings(home=tmp_path / "vhome"), nats_bus)
    await verifier.start()
    monkeypatch.setenv("HALO_GATEWAY_URL", gateway_url)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    args = ["verify", "dry-run", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--verifier", "regex_format",
            "--n", "4", "--max-new-tokens", "8", "--seed", "3", "--json"]
    runner = CliRunner()
    try:
        # The CLI is synchronous HTTP: run it off the event loop that serves the gateway and services.
        res = await asyncio.to_thread(runner.invoke, app, [*args, "--verifier-params", '{"pattern": "e"}'])
        assert res.exit_code == 0, res.output
        report = json.loads(res.stdout)
        assert report["num_prompts"] == 3 and report["num_samples"] == 12 and report["verifier"] == "regex_format"

        # The rewards are exactly "does the completion contain an 'e'" for the completions that seed gives.
        again = await nats_bus.request(subjects.ROLLOUT_GENERATE, RolloutRequest(
            model=str(tiny_model_dir), params=SampleParams(n=4, max_new_tokens=8, seed=3),
            requests=[SampleRequest(prompt=p) for p in PROMPTS]), RolloutResult, timeout=120)
        expected = [[float(re.search("e", c.text.strip()) is not None) for c in r.completions] for r in again.results]
        assert [p["rewards"] for p in report["prompts"]] == expected

        # The random tiny model never ends a completion within 8 tokens: that is reported too.
        codes = [w["code"] for w in report["warnings"]]
        assert "truncated" in codes and "all_zero" not in codes and report["truncated_fraction"] == 1.0
        # A verifier nothing satisfies: all-zero warning, and --strict fails the command.
        none = await asyncio.to_thread(runner.invoke, app, [*args, "--verifier-params", '{"pattern": "^ZZZZ$"}',
                                                            "--strict"])
        assert none.exit_code == 1
        assert [w["code"] for w in json.loads(none.stdout)["warnings"]] == ["all_zero", "truncated"]

        # The table view runs too (arbitrary model text must not break rich markup).
        table = await asyncio.to_thread(runner.invoke, app, [*args[:-1], "--verifier-params", '{"pattern": "e"}'],
                                        env={"COLUMNS": "200"})
        assert table.exit_code == 0 and "rewards from regex_format" in table.stdout
    finally:
        await verifier.stop()
