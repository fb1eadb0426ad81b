"""The rollout service never runs code shipped with a model: requests carry no trust_remote_code, and a model
whose config has auto_map loads its built-in architecture (or is refused) without importing that code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from halo_common.errors import Unprocessable
from halo_models.tiny import make_tiny_cached
from halo_sampling.backends import make_backend
from halo_schemas.rollout import SampleRequest


def _crafted(target: Path, marker: Path, model_type: str | None = None) -> Path:
    shutil.copytree(make_tiny_cached(arch="llama"), target)
    (target / "modeling_evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
                                             "from transformers import LlamaForCausalLM as EvilForCausalLM\n")
    cfg = json.loads((target / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    if model_type:
        cfg["model_type"] = model_type
    (target / "config.json").write_text(json.dumps(cfg))
    return target


def test_rollout_requests_cannot_ask_for_remote_code() -> None:
    assert "trust_remote_code" not in SampleRequest.model_fields


def test_transformers_backend_never_imports_auto_map_code(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    backend = make_backend("transformers", device="cpu")
    backend.load(str(_crafted(tmp_path / "known", marker)))
    assert type(backend.model).__name__ == "LlamaForCausalLM"
    with pytest.raises(Unprocessable):
        make_backend("transformers", device="cpu").load(str(_crafted(tmp_path / "own", marker, model_type="evil")))
    assert not marker.exists()
