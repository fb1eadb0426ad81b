"""The worker's own policy (defence in depth behind the gateway) and loading models that ship code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from halo_common.errors import BadRequest, Forbidden, NotFound, Unprocessable
from halo_common.paths import IMPORTED_MARKER
from halo_models.tiny import make_tiny_cached
from halo_schemas.training import SFTSpec
from halo_trainer_torch.core.components.model import load_base_model, load_tokenizer, resolve_settings
from halo_trainer_torch.core.policy import spec_guard
from halo_trainer_torch.core.runner import run_job
from halo_trainer_torch.settings import TrainerTorchSettings


def crafted(target: Path, marker: Path, *, own_architecture: bool) -> Path:
    """A tiny model whose config has auto_map to a Python file writing ``marker`` on import. With
    ``own_architecture`` its model_type exists only in that file (loading it needs the code)."""
    shutil.copytree(make_tiny_cached(arch="llama"), target)
    (target / "modeling_evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
                                             "from transformers import LlamaForCausalLM as EvilForCausalLM\n")
    (target / "configuration_evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
                                                  "from transformers import LlamaConfig as EvilConfig\n")
    cfg = json.loads((target / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                       "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    if own_architecture:
        cfg["model_type"] = "evil"
    (target / "config.json").write_text(json.dumps(cfg))
    return target


def test_guard_refuses_remote_code_unless_allowed_and_never_for_imported(tmp_path: Path) -> None:
    home = tmp_path / "home"
    imported = home / "runs" / "run-abc" / "adapter"
    imported.mkdir(parents=True)
    (home / "runs" / "run-abc" / IMPORTED_MARKER).write_text("{}")
    mine = home / "models" / "mine"
    mine.mkdir(parents=True)
    data = {"train": str(tmp_path / "d.jsonl")}
    off, on = spec_guard(TrainerTorchSettings(home=home)), spec_guard(TrainerTorchSettings(home=home,
                                                                                           allow_remote_code=True))
    with pytest.raises(Forbidden, match="HALO_ALLOW_REMOTE_CODE=1") as err:
        off(SFTSpec(model=str(mine), data=data, trust_remote_code=True))
    assert err.value.param == "trust_remote_code" and err.value.code == 403
    on(SFTSpec(model=str(mine), data=data, trust_remote_code=True))  # the operator allowed it
    with pytest.raises(Forbidden, match="imported bundle"):
        on(SFTSpec(model=str(imported), data=data, trust_remote_code=True))
    off(SFTSpec(model=str(imported), data=data))  # without code execution an imported model is fine
    with pytest.raises(BadRequest, match="relative path"):
        off(SFTSpec(model="tiny://llama", data={"train": "d.jsonl"}))


def test_refused_job_fails_before_loading_and_keeps_what_it_was(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    model = crafted(tmp_path / "m", marker, own_architecture=False)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "hello"}) + "\n")
    spec = {"model": str(model), "data": {"train": str(data)}, "trust_remote_code": True, "name": "refused"}
    summary = run_job("sft", spec, tmp_path / "run", guard=spec_guard(TrainerTorchSettings(home=tmp_path / "home")))
    assert summary.state == "failed" and "trust_remote_code is refused" in (summary.failure_reason or "")
    assert (summary.method, summary.base_model) == ("sft", str(model))
    assert not marker.exists()


def test_auto_map_code_is_not_imported_without_trust_remote_code(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    known = crafted(tmp_path / "known", marker, own_architecture=False)
    spec = SFTSpec(model=str(known), data={"train": "/d.jsonl"}, finetune="full", dtype="float32")
    resolved = resolve_settings(spec)
    assert type(load_base_model(spec, resolved)).__name__ == "LlamaForCausalLM"  # the built-in class
    load_tokenizer(resolved.model_path)
    assert not marker.exists()
    # An architecture that exists only as the model's own code cannot load without it: a clear refusal.
    own = crafted(tmp_path / "own", marker, own_architecture=True)
    spec = SFTSpec(model=str(own), data={"train": "/d.jsonl"}, finetune="full", dtype="float32")
    with pytest.raises(Unprocessable, match="needs its own Python code \\(auto_map\\)") as err:
        load_base_model(spec, resolve_settings(spec))
    assert err.value.param == "model"
    assert not marker.exists()


def test_missing_local_model_is_model_not_found(tmp_path: Path) -> None:
    spec = SFTSpec(model=str(tmp_path / "no-such-model"), data={"train": "/d.jsonl"})
    with pytest.raises(NotFound) as err:
        resolve_settings(spec)
    assert str(err.value) == f"model not found: {tmp_path / 'no-such-model'} (param: model)"
