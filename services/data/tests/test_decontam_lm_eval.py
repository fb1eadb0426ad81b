"""decontaminate against lm-eval tasks with local data: the offline suite shipped with the eval service, as a group
(``offline``) and one of its tasks by lm-eval name (``lm-eval:<task>``), each hit naming the task document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from halo_data.core.common import DataError
from halo_data.core.decontam import decontaminate, offline_suite_dir

pytest.importorskip("lm_eval", reason="lm-eval tasks need lm-eval")


def _suite_rows(name: str) -> list[dict]:
    try:
        data = offline_suite_dir() / "data" / name
    except DataError:
        pytest.skip("the offline suite ships with halo-eval, which is not installed")
    return [json.loads(line) for line in data.read_text().splitlines() if line.strip()]


def test_lm_eval_task_and_offline_suite_hits_name_the_document(tmp_path: Path) -> None:
    programs = _suite_rows("code_output.jsonl")
    planted = {3: 0, 11: 7}  # training row -> code_output document
    rows = [{"prompt": f"Write a haiku about the season number {i}.", "completion": "Leaves fall, quiet."}
            for i in range(20)]
    for pos, doc in sorted(planted.items()):
        p = programs[doc]
        # Lightly edited: squeezed spacing, a question and an explanation around the benchmark item.
        program = p["program"].replace(" = ", "=").replace(", ", ",")
        rows.insert(pos, {"prompt": f"Quiz time! What does this print?\n```python\n{program}\n```",
                          "completion": f"Output: {p['answer']} -- easy."})
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))

    one = decontaminate(src, tmp_path / "clean.jsonl", benchmarks=["lm-eval:halo_code_output"])
    report = [json.loads(line) for line in Path(one.files["report"]).read_text().splitlines()]
    named = {r["row"] - 1: r["hits"][0]["item"] for r in report}
    print(f"\nlm-eval:halo_code_output hits: {named}; details: {one.details['items_hit']}")
    assert named == {pos: f"halo_code_output/{doc}" for pos, doc in planted.items()}
    assert {h["benchmark"] for r in report for h in r["hits"]} == {"lm-eval:halo_code_output"}
    assert one.rows_out == len(rows) - len(planted) and one.dropped == {"contaminated": len(planted)}
    assert one.details["eval_items"] == len(programs)

    suite = decontaminate(src, tmp_path / "flagged.jsonl", benchmarks=["offline"], mode="flag")
    flagged = [json.loads(line) for line in (tmp_path / "flagged.jsonl").read_text().splitlines()]
    assert suite.rows_out == len(rows)
    hits = {i: r["contamination"][0]["item"] for i, r in enumerate(flagged) if "contamination" in r}
    assert hits == {pos: f"halo_code_output/{doc}" for pos, doc in planted.items()}
    # The whole suite was indexed: its other tasks' items are there (most too short to mean contamination).
    assert suite.details["eval_items"] > len(programs)


def test_unknown_lm_eval_task_is_an_error_naming_it(tmp_path: Path) -> None:
    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps({"text": "anything at all"}) + "\n")
    with pytest.raises(DataError, match="lm-eval task 'no_such_task_here' could not be loaded"):
        decontaminate(src, tmp_path / "o.jsonl", benchmarks=["lm-eval:no_such_task_here"])
