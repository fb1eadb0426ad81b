"""convert / merge as jobs on serve, end to end: the CLI submits through the gateway and follows the run,
serve exports and verifies, the registry records the artifact (quant, status, verify figures), and
``halo-forge artifacts list|show|rm`` and the run's detail show it. Real processes and NATS."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from halo_testing.stack import ProcessStack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    s = ProcessStack(tmp_path_factory.mktemp("convert-stack"), ["halo_gateway", "halo_serve", "halo_registry"],
                     ready={"serve", "registry"}, env={"HALO_SERVE_PORT": "0"})
    yield s
    s.close()


@pytest.fixture(scope="module")
def source(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from halo_serve.core.convert.testing import confident_copy

    return confident_copy(tiny_model_dir, tmp_path_factory.mktemp("src") / "tiny")


def _artifacts(stack: ProcessStack, *args: str) -> list[dict]:
    r = stack.cli("artifacts", "list", "--json", *args)
    assert r.returncode == 0, r.stderr + r.stdout
    return json.loads(r.stdout)


def test_convert_list_asks_serve(stack: ProcessStack) -> None:
    r = stack.cli("convert", "--list")
    assert r.returncode == 0, r.stderr + r.stdout
    assert all(f in r.stdout for f in ("hf", "gguf", "mlx", "q8", "q4"))
    formats = httpx.get(f"{stack.url}/api/v1/convert/formats", timeout=30).json()["formats"]
    assert formats["hf"]["fp16"] is None and "q4" not in formats["hf"]


def test_cli_convert_runs_a_job_and_records_the_artifact(stack: ProcessStack, source: Path, tmp_path: Path) -> None:
    fmt = "gguf"
    if httpx.get(f"{stack.url}/api/v1/convert/formats", timeout=30).json()["formats"]["gguf"]["q8"]:
        fmt = "hf"  # llama.cpp not built on this host: the job path is the same
    out = stack.home / "models" / ("tiny-q8.gguf" if fmt == "gguf" else "tiny-fp16")
    quant = "q8" if fmt == "gguf" else "fp16"
    r = stack.cli("convert", str(source), "--format", fmt, "--quant", quant, "--out", str(out))
    assert r.returncode == 0, r.stderr + r.stdout
    assert "queued" in r.stdout and "top-1 agreement" in r.stdout and "verified" in r.stdout
    (art,) = [a for a in _artifacts(stack, "--format", fmt) if a["path"] == str(out)]
    assert (art["kind"], art["quant"], art["status"]) == ("export", quant, "verified")
    assert art["details"]["verify"]["passed"] and art["details"]["parents"] == [str(source.resolve())]
    shown = stack.cli("artifacts", "show", str(art["id"]))
    assert shown.returncode == 0 and "top-1 agreement" in shown.stdout and quant in shown.stdout
    detail = httpx.get(f"{stack.url}/api/v1/runs/{art['run_id']}", timeout=30).json()
    assert detail["run"]["method"] == "convert" and [a["path"] for a in detail["artifacts"]] == [str(out)]
    # rm --delete-files removes the export (inside HALO_HOME) and the row.
    rm = stack.cli("artifacts", "rm", str(art["id"]), "--delete-files")
    assert rm.returncode == 0 and f"removed {out}" in rm.stdout and not out.exists()
    assert all(a["id"] != art["id"] for a in _artifacts(stack))


def test_bad_jobs_fail_with_a_clear_line(stack: ProcessStack, tmp_path: Path) -> None:
    r = stack.cli("convert", str(tmp_path / "missing"), "--format", "hf", "--quant", "fp16")
    assert r.returncode == 1 and "missing" in (r.stderr + r.stdout) and "failed" in (r.stderr + r.stdout)
    r = stack.cli("convert", str(tmp_path), "--format", "hf", "--quant", "q4")
    assert r.returncode == 1 and "choose one of fp32, fp16, bf16" in (r.stderr + r.stdout)
    r = stack.cli("merge", "bake", str(tmp_path))
    assert r.returncode == 1 and "not a PEFT adapter" in (r.stderr + r.stdout)
