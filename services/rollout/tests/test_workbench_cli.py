"""The ``verify-dry-run`` command's input handling and registration (the end-to-end run against the
real gateway, rollout and verifier-sandbox services is in tests/integration/test_rollout_service.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

pytest.importorskip("halo_forge")

from halo_common.errors import BadRequest, NotFound  # noqa: E402
from halo_forge.commands import workbench  # noqa: E402


def test_prompts_files_jsonl_and_txt(tmp_path: Path) -> None:
    jl = tmp_path / "p.jsonl"
    jl.write_text("\n".join([
        json.dumps({"prompt": "2+2=", "context": {"reference": "4"}}),
        "",
        json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}),
        json.dumps({"prompt": "third"}),
    ]) + "\n")
    recs = workbench.read_prompts(jl, limit=2)
    assert [r["request"] for r in recs] == [{"prompt": "2+2="},
                                            {"messages": [{"role": "system", "content": "s"},
                                                          {"role": "user", "content": "hi"}]}]
    assert recs[0]["context"] == {"reference": "4", "prompt": "2+2="} and recs[1]["preview"] == "hi"
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\nsecond [bold]prompt\n")
    assert [r["preview"] for r in workbench.read_prompts(txt, limit=10)] == ["first prompt", "second [bold]prompt"]


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "p.jsonl:2: not JSON"),
    ('{"completion": "x"}', "p.jsonl:2: needs a 'prompt' or 'messages' field"),
    ('{"prompt": "x", "contxt": {}}', "p.jsonl:2: unknown field(s) contxt"),
])
def test_bad_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ok"}\n' + line + "\n")
    with pytest.raises(BadRequest) as err:
        workbench.read_prompts(f, limit=10)
    assert message in err.value.message and err.value.param == "prompts"


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        workbench.read_prompts(tmp_path / "none.jsonl", limit=3)
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(BadRequest, match="no prompts"):
        workbench.read_prompts(tmp_path / "e.jsonl", limit=3)


def test_mounts_under_the_verify_group() -> None:
    app = typer.Typer()
    verify_group = typer.Typer()
    app.add_typer(verify_group, name="verify")
    workbench.register(app)
    assert app.registered_commands == []
    assert [c.name for c in verify_group.registered_commands] == ["dry-run"]
    # Without a verify group there is nowhere to mount it: a clear error, not a silent no-op.
    with pytest.raises(RuntimeError, match="verify"):
        workbench.register(typer.Typer())

