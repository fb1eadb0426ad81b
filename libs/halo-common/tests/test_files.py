"""Content hashes, dataset fingerprints and atomic rewrites."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from halo_common.files import dataset_fingerprint, sha256_file, write_json_atomic, write_jsonl_atomic


def test_fingerprints_follow_the_tree_convention(tmp_path: Path) -> None:
    data = tmp_path / "d"
    (data / "sub").mkdir(parents=True)
    (data / "b.jsonl").write_bytes(b'{"x": 1}\n')
    (data / "sub" / "a.txt").write_bytes(b"hello")
    sha_b, sha_a = hashlib.sha256(b'{"x": 1}\n').hexdigest(), hashlib.sha256(b"hello").hexdigest()
    expected = hashlib.sha256(f"b.jsonl {sha_b}\nsub/a.txt {sha_a}\n".encode()).hexdigest()
    assert dataset_fingerprint(data) == (expected, 14)
    assert dataset_fingerprint(data / "b.jsonl") == (sha_b, 9) and sha256_file(data / "b.jsonl") == sha_b


def test_a_failed_rewrite_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_json_atomic(target, {"done": [1, 2]})
    assert json.loads(target.read_text()) == {"done": [1, 2]}

    def rows():  # noqa: ANN202
        yield {"ok": 1}
        raise RuntimeError("crashed mid-write")

    lines = tmp_path / "rows.jsonl"
    write_jsonl_atomic(lines, [{"b": 2, "a": 1}])
    with pytest.raises(RuntimeError, match="crashed mid-write"):
        write_jsonl_atomic(lines, rows())
    assert lines.read_text() == '{"a": 1, "b": 2}\n', "the old content survives a failed rewrite"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl", "state.json"]
