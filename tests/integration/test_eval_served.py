"""``halo-forge eval --backend served``: a model the serve service serves, evaluated through its OpenAI endpoint
(lm-eval's ``local-completions``: loglikelihood via ``/v1/completions`` with ``echo`` + ``logprobs``), matches
the hf backend on the same weights. Multiple-choice accuracy must agree within 0.05 absolute (tolerance for
how the server tokenizes context + continuation jointly; greedy generation tasks are not compared)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from halo_testing.stack import ProcessStack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

TOLERANCE = 0.05


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[ProcessStack]:
    s = ProcessStack(tmp_path_factory.mktemp("eval-served"), ["halo_gateway", "halo_serve", "halo_eval"],
                     ready={"eval", "serve"}, healthy=("ok", "degraded"), timeout_s=240,
                     env={"HALO_SERVE_MODELS": json.dumps([f"tiny={tiny_model_dir}"]), "HALO_SERVE_PORT": "0",
                          "HALO_SERVE_BACKEND": "transformers", "HALO_SERVE_DTYPE": "float32"})
    yield s
    s.close()


def test_served_matches_hf_on_the_same_weights(stack: ProcessStack, tiny_model_dir: Path) -> None:
    tasks = "halo_arith_mc,halo_compare_mc"
    out = {}
    for backend, model in (("hf", str(tiny_model_dir)), ("served", "tiny")):
        r = stack.cli("eval", "--model", model, "--backend", backend, "--tasks", tasks, "--limit", "20",
                      "--no-record", "--json", timeout=1200)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        out[backend] = json.loads(r.stdout)["tasks"]
    for task in ("halo_arith_mc", "halo_compare_mc"):
        hf, served = out["hf"][task], out["served"][task]
        assert hf["n"] == served["n"] == 20 and hf["metric"] == served["metric"] == "acc"
        assert abs(hf["value"] - served["value"]) <= TOLERANCE, (task, hf, served)
