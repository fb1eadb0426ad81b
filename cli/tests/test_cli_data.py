"""``halo-forge data`` in local mode (no stack): dedup, a recipe, inspect and the errors a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from halo_common.errors import BadRequest
from typer.testing import CliRunner

pytest.importorskip("halo_data")
from halo_forge.main import app  # noqa: E402

runner = CliRunner()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dedup_local_and_inspect(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "the same words here again"}, {"text": "The same  words here again"},
                                              {"text": "different"}])
    r = runner.invoke(app, ["data", "dedup", "--input", str(src), "--output", str(tmp_path / "o.jsonl"), "--method",
                            "exact", "--local", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["rows_out"] == 2 and json.loads(r.output)["dropped"] == {"exact": 1}
    r = runner.invoke(app, ["data", "inspect", str(tmp_path / "o.jsonl"), "--local"])
    assert r.exit_code == 0 and "2 rows" in r.output and "text=2" in r.output


def test_recipe_local(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "raw.jsonl", [{"prompt": f"q{i % 6} about things", "completion": f"answer {i % 6} here"}
                                         for i in range(12)])
    (tmp_path / "recipe.yaml").write_text("input: raw.jsonl\noutput: out/final.jsonl\nsteps:\n"
                                          "  - {op: dedup, method: exact}\n  - {op: score}\n"
                                          "  - {op: filter, top_percent: 50}\n")
    r = runner.invoke(app, ["data", "run", str(tmp_path / "recipe.yaml"), "--local", "--json"])
    assert r.exit_code == 0, r.output
    assert [s["rows_out"] for s in json.loads(r.output)["steps"]] == [6, 6, 3]
    assert len((tmp_path / "out" / "final.jsonl").read_text().splitlines()) == 3


def test_errors_name_the_problem(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"body": "x"}])
    # The CLI's entry point prints a raised HaloError as one red line; here the exception itself is checked.
    r = runner.invoke(app, ["data", "dedup", "--input", str(src), "--key", "text", "--local"])
    assert isinstance(r.exception, BadRequest) and "in.jsonl:1: no field 'text'; the record has [body]" in str(r.exception)
    r = runner.invoke(app, ["data", "dedup", "--input", str(src), "--threshold", "1.5", "--local"])
    assert isinstance(r.exception, BadRequest) and "threshold" in str(r.exception)
    (tmp_path / "bad.yaml").write_text("input: x.jsonl\nsteps:\n  - {op: sort}\n")
    r = runner.invoke(app, ["data", "run", str(tmp_path / "bad.yaml"), "--local"])
    assert isinstance(r.exception, BadRequest) and "'sort'" in str(r.exception)
