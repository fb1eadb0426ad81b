"""How ``halo-forge train`` builds the spec it sends: paths absolute against the caller's directory, and
config files whose syntax errors name the file's line and column."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from halo_common.errors import BadRequest
from halo_forge.commands.train import build_spec, load_config


def test_relative_paths_resolve_against_the_callers_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "chat.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path)
    spec = build_spec(None, {"model": "my-model", "data": "data/chat.jsonl", "eval_data": "./held.jsonl"},
                      ["ref_model=../elsewhere/ref", "curriculum.historical_stats=stats.json"])
    assert spec["model"] == str(tmp_path / "my-model")  # a Hub-id-shaped name that exists here is the directory
    assert spec["data"] == {"train": str(tmp_path / "data" / "chat.jsonl"),
                            "eval": str(tmp_path / "held.jsonl")}  # made absolute even though it does not exist
    assert spec["ref_model"] == os.path.abspath(tmp_path / ".." / "elsewhere" / "ref")
    assert spec["curriculum"]["historical_stats"] == str(tmp_path / "stats.json")


def test_hub_ids_and_builtin_locations_stay_as_they_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = build_spec(None, {"model": "Qwen/Qwen2.5-0.5B", "data": "demo://demo_sft.jsonl"}, None)
    assert spec["model"] == "Qwen/Qwen2.5-0.5B" and spec["data"]["train"] == "demo://demo_sft.jsonl"
    spec = build_spec(None, {"model": "tiny://llama", "data": "HuggingFaceH4/no_robots"}, None)
    assert spec["model"] == "tiny://llama" and spec["data"]["train"] == "HuggingFaceH4/no_robots"
    home = build_spec(None, {"model": "~/models/x"}, None)["model"]
    assert home == os.path.join(os.path.expanduser("~"), "models", "x")


def test_config_paths_are_made_absolute_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "spec.json"
    cfg.write_text(json.dumps({"model": "./m", "data": "train.jsonl"}))
    monkeypatch.chdir(tmp_path)
    spec = build_spec(cfg, {}, None)
    assert spec["model"] == str(tmp_path / "m") and spec["data"]["train"] == str(tmp_path / "train.jsonl")


def test_malformed_json_config_names_line_and_column(tmp_path: Path) -> None:
    cfg = tmp_path / "spec.json"
    cfg.write_text('{\n  "model": "tiny://llama",\n  "max_steps": 5\n  "lora": {}\n}\n')
    with pytest.raises(BadRequest) as err:
        load_config(cfg)
    assert str(err.value).startswith(f"{cfg}:4:3: not valid JSON: Expecting ',' delimiter")
    assert err.value.param == "config"


def test_malformed_yaml_config_names_line_and_column(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    cfg = tmp_path / "spec.yaml"
    cfg.write_text("model: tiny://llama\ndata:\n  train: [a.jsonl\nmax_steps: 3\n")
    with pytest.raises(BadRequest) as err:
        load_config(cfg)
    assert str(err.value).startswith(f"{cfg}:4:")
    assert "not valid YAML" in str(err.value)
