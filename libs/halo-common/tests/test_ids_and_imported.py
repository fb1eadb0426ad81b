"""The shared id rule (``halo_common.ids.validate_id``), ``HaloPaths.run_dir`` built on it, and
``halo_common.paths.is_imported`` on a real directory tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from halo_common.errors import BadRequest
from halo_common.ids import ID_PATTERN, InvalidId, is_valid_id, new_id, validate_id
from halo_common.paths import IMPORTED_MARKER, HaloPaths, is_imported

HOSTILE = {
    "": "is empty",
    "\n": "contains '\\n'",
    "run-1\n": "contains '\\n'",  # re's "$" would let this one through
    "..": "contains '.'",
    ".": "contains '.'",
    "a/b": "contains '/'",
    "/abs": "contains '/'",
    "a\\b": "contains '\\\\'",
    "a\x00b": "contains '\\x00'",
    "é": "contains 'é'",
    "a b": "contains ' '",
    "-run": "starts with '-'",
    "_run": "starts with '_'",
    "x" * 129: "is 129 characters long (at most 128)",
}


@pytest.mark.parametrize(("value", "problem"), sorted(HOSTILE.items()))
def test_hostile_ids_are_refused_naming_the_problem(value: str, problem: str) -> None:
    assert not is_valid_id(value)
    with pytest.raises(InvalidId) as err:
        validate_id(value, "run_id")
    assert problem in err.value.message and err.value.param == "run_id"
    assert isinstance(err.value, BadRequest) and isinstance(err.value, ValueError) and err.value.code == 400


def test_valid_ids_pass_unchanged() -> None:
    for value in ("run-1", "r", "9", "A_b-C", "x" * 128, new_id("run"), new_id("job")):
        assert validate_id(value, "job_id") == value and is_valid_id(value)
    assert not is_valid_id(None) and not is_valid_id(12)
    assert ID_PATTERN == r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"


def test_run_dir_uses_the_shared_rule(tmp_path: Path) -> None:
    paths = HaloPaths(tmp_path)
    assert paths.run_dir("run-1") == tmp_path / "runs" / "run-1"
    for value in HOSTILE:
        with pytest.raises(InvalidId, match="invalid run_id"):
            paths.run_dir(value)


def test_is_imported(tmp_path: Path) -> None:
    home = tmp_path / "home"
    paths = HaloPaths(home).ensure()
    imported, local = paths.run_dir("run-imp"), paths.run_dir("run-local")
    for d in (imported / "adapter", local / "adapter"):
        d.mkdir(parents=True)
    (imported / IMPORTED_MARKER).write_text(json.dumps({"source": "elsewhere"}))
    upload = paths.incoming_dir / ".staging-x" / "run" / "adapter"
    upload.mkdir(parents=True)

    assert is_imported(imported, paths) and is_imported(imported / "adapter", paths)
    assert is_imported(imported / "adapter" / "not-yet-there.bin", paths)
    assert is_imported(upload, paths) and is_imported(paths.incoming_dir, paths)
    assert not is_imported(local / "adapter", paths) and not is_imported(local, paths)
    assert not is_imported(paths.runs_dir, paths) and not is_imported(home, paths)
    assert not is_imported(tmp_path / "elsewhere" / "model", paths)
    # ".." is judged where it leads, not where it starts.
    assert not is_imported(imported / ".." / "run-local" / "adapter", paths)
    assert is_imported(local / ".." / "run-imp" / "adapter", paths)
    # A symlink outside HALO_HOME that points into an imported run counts as imported.
    link = tmp_path / "innocent-looking-model"
    link.symlink_to(imported / "adapter")
    assert is_imported(link, paths)
    # So does the imported run reached through a symlinked HALO_HOME.
    home_link = tmp_path / "home-link"
    home_link.symlink_to(home)
    assert is_imported(home_link / "runs" / "run-imp" / "adapter", paths)
    assert is_imported(imported / "adapter", HaloPaths(home_link))
    # The marker is what makes a run imported: without it, the same directory is local.
    (imported / IMPORTED_MARKER).unlink()
    assert not is_imported(imported / "adapter", paths)
