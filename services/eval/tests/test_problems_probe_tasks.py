"""Datasets for pass@k, the probe's comparison, task resolution, and the offline suite's determinism."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
from halo_common.errors import BadRequest, NotFound
from halo_eval.core.probe import Score, compare, load_baseline_file, scores_from_evals
from halo_eval.core.problems import load_problems
from halo_eval.core.tasks import GROUPS, SUITE_DIR, TaskIndex, check_known, expand

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_offline_suite.py"


def test_humaneval_comes_from_the_package() -> None:
    problems = load_problems("humaneval")
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0"
    assert all(p.verifier == "humaneval" and p.entry_point and p.canonical_solution for p in problems)


def test_bad_datasets_are_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(BadRequest, match=r"empty\.jsonl is empty"):
        load_problems(str(empty))
    with pytest.raises(NotFound, match="neither humaneval nor an existing JSONL"):
        load_problems(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "a", "text": "x", "test_list": ["assert f() == 1"]}) + "\n"
                   + json.dumps({"task_id": "b", "prompt": "def f():", "test": "def check(c): pass"}) + "\n")
    with pytest.raises(BadRequest, match=r"bad\.jsonl:2: field 'entry_point'"):
        load_problems(str(bad))
    with pytest.raises(BadRequest, match="pass the MBPP JSONL"):
        load_problems("mbpp")
    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text(json.dumps({"task_id": 1, "text": "Write f.", "test_list": ["assert f() == 1"]}) + "\n")
    [p] = load_problems(str(mbpp))
    assert p.verifier == "mbpp" and p.tests == ["assert f() == 1"]


def test_probe_flags_only_drops_beyond_tolerance(tmp_path: Path) -> None:
    base = {"a": Score("acc", 0.50), "b": Score("acc", 0.40), "c": Score("loss", 1.0, higher_is_better=False)}
    cur = {"a": Score("acc", 0.46), "b": Score("acc", 0.30), "c": Score("loss", 1.2, higher_is_better=False)}
    rep = compare(cur, base, tolerance=0.05)
    assert [r.task for r in rep.regressed] == ["b", "c"] and not rep.ok
    assert rep.regressed[0].delta == pytest.approx(-0.10)
    assert compare(cur, base, tolerance=0.25).ok
    rep = compare({"a": Score("acc", 0.5)}, base, tolerance=1.0)
    assert rep.missing == ["b", "c"] and not rep.ok           # a missing task is never a silent pass
    rows = [{"task": "t", "metric": "acc_norm", "value": 0.1, "details": {}},
            {"task": "t", "metric": "acc", "value": 0.3, "details": {"primary": True}}]
    assert scores_from_evals(rows) == {"t": Score("acc", 0.3)}
    with pytest.raises(NotFound, match="baseline"):
        load_baseline_file(tmp_path / "missing.json")
    with pytest.raises(BadRequest, match="tolerance"):
        compare(cur, base, tolerance=-1)


def test_unknown_task_lists_close_matches() -> None:
    known = ["arc_easy", "arc_challenge", "hellaswag", "halo_arith_mc"]
    assert expand(["offline,arc_easy", "arc_easy"]) == ["halo_offline", "arc_easy"]
    with pytest.raises(BadRequest) as err:
        check_known(["arc_eazy"], known)
    assert err.value.param == "tasks" and "unknown task 'arc_eazy'" in err.value.message
    assert "arc_easy" in err.value.message
    with pytest.raises(BadRequest, match="curated groups: offline, core"):
        check_known(["zzzzzz"], known)


def test_every_curated_name_exists_in_the_installed_lm_eval() -> None:
    index = TaskIndex()
    names = set(index.names)
    for group, tasks in GROUPS.items():
        missing = [t for t in tasks if t not in names]
        assert not missing, f"group {group}: {missing} not in lm-eval"
    assert index.resolve(["offline"]) == ["halo_offline"]


def test_offline_suite_is_regenerated_byte_for_byte(tmp_path: Path) -> None:
    build = runpy.run_path(str(SCRIPT))["build"]
    written = build(tmp_path)
    assert set(written) == {"arith_mc", "arith_gen", "compare_mc", "code_output", "animals_mc"}
    for name, path in written.items():
        shipped = SUITE_DIR / "data" / f"{name}.jsonl"
        assert path.read_bytes() == shipped.read_bytes(), name
        assert len(shipped.read_text().splitlines()) == (40 if name == "animals_mc" else 100)
