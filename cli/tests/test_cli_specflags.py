"""Training flags are derived from the spec models: every scalar field has a flag with the field's help, and
what the flags say lands in the spec sent to the gateway."""

from __future__ import annotations

from typing import Any, Literal

import pytest
import typer
from halo_forge.commands import train as train_cmd
from halo_forge.main import app
from halo_forge.specflags import nest, spec_command, spec_flags
from halo_schemas.base import UserInput
from halo_schemas.methods import TRAINING_JOB_SPECS
from pydantic import BaseModel, Field
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """What the training commands would POST (no gateway needed)."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def fake_submit(method: str, config: Any, flags: dict[str, Any], sets: Any, *_rest: Any) -> None:
        calls.append((method, train_cmd.build_spec(config, flags, sets)))

    monkeypatch.setattr(train_cmd, "_submit", fake_submit)
    return calls


def test_sft_flags_fill_nested_fields_and_keep_the_short_names(sent: list, tmp_path) -> None:  # noqa: ANN001
    data = tmp_path / "chat.jsonl"
    data.write_text("{}\n")
    result = runner.invoke(app, ["train", "sft", "-m", "tiny://llama", "-d", str(data), "--lora-rank", "32",
                                 "--lr", "1e-4", "--full-sequence-loss", "--max-steps", "7", "--finetune", "dora",
                                 "--eval-fraction", "0.1", "--set", "lora.alpha=64"])
    assert result.exit_code == 0, result.output
    method, spec = sent[0]
    assert method == "sft"
    assert spec == {"model": "tiny://llama", "data": {"train": str(data), "eval_fraction": 0.1},
                    "lora": {"rank": 32, "alpha": 64}, "learning_rate": 1e-4, "completion_only_loss": False,
                    "max_steps": 7, "finetune": "dora"}


def test_raft_keeps_its_strategy_shorthands_and_verifiers(sent: list, monkeypatch: pytest.MonkeyPatch) -> None:
    from halo_forge.commands import train_rl

    posted: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(train_rl, "submit_rl", lambda method, spec, **_k: posted.append((method, spec)))
    result = runner.invoke(app, ["train", "raft", "-m", "tiny://llama", "-d", "demo://x.jsonl", "-v", "exact_match:2",
                                 "--curriculum", "progressive", "--shaping", "annealing", "--cycles", "3",
                                 "--no-compile-only", "-n", "4"])
    assert result.exit_code == 0, result.output
    method, spec = posted[0]
    assert method == "raft"
    assert spec["curriculum"] == {"strategy": "progressive"} and spec["shaping"] == {"strategy": "annealing"}
    assert spec["verifiers"] == [{"name": "exact_match", "weight": 2.0}]
    assert spec["cycles"] == 3 and spec["allow_compile_only"] is False and spec["num_generations"] == 4


@pytest.mark.parametrize("method", sorted(TRAINING_JOB_SPECS))
def test_every_scalar_field_has_a_flag_with_its_description(method: str) -> None:
    spec_cls = TRAINING_JOB_SPECS[method]
    flags = {f.path: f for f in spec_flags(spec_cls)}
    result = runner.invoke(app, ["train", method, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    for name in ("max_steps", "learning_rate", "seed", "finetune", "trust_remote_code"):
        flag = flags[(name,)]
        assert flag.help and flag.help.split(".")[0] in spec_cls.model_fields[name].description
        assert flag.names[0].split("/")[0] in result.output
    assert ("lora", "rank") in flags, "fields of nested spec models are flags too"


class _Inner(BaseModel):
    depth: int = Field(default=1, description="How deep.")


class _NewSpec(UserInput):
    schema_id = "halo.test.new.v1"

    brand_new_knob: Literal["a", "b"] = Field(default="a", description="A field added after the CLI was written.")
    inner: _Inner = Field(default_factory=_Inner, description="Nested.")
    items: list[str] = Field(default_factory=list, description="Only through --set.")


def test_a_new_spec_field_needs_no_cli_edit() -> None:
    got: list[Any] = []
    cmd_app = typer.Typer()
    cmd_app.command("new")(spec_command(_NewSpec, lambda values, options: got.append((nest(values), options["detach"])),
                                        doc="A new method."))
    cmd_app.command("other")(lambda: None)  # a group, so the command is invoked by name
    result = runner.invoke(cmd_app, ["new", "--brand-new-knob", "b", "--inner-depth", "3", "--detach"])
    assert result.exit_code == 0, result.output
    assert got == [({"brand_new_knob": "b", "inner": {"depth": 3}}, True)]
    help_text = runner.invoke(cmd_app, ["new", "--help"], env={"COLUMNS": "300"}).output
    assert "A field added after the CLI was written. One of: a, b." in help_text
    assert "--items" not in help_text
