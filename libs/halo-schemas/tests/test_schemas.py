from pathlib import Path

import halo_schemas.all  # noqa: F401
import pytest
from halo_schemas import JobSpecBase, Message, RunProgressed, UserInput, describe_validation_error, model_for
from halo_schemas.base import SCHEMA_ID_RE, UnknownSchema, registered_schemas
from halo_schemas.export import stale_files
from pydantic import Field, ValidationError

DOCS = Path(__file__).resolve().parents[3] / "docs" / "schemas"


class ExampleSpec(JobSpecBase):
    schema_id = "halo.test.example-spec.v1"
    learning_rate: float = Field(default=1e-4, gt=0, description="Peak learning rate.")


def test_user_input_rejects_unknown_field_by_name() -> None:
    with pytest.raises(ValidationError) as err:
        ExampleSpec.model_validate({"learning_rate": 1e-3, "lerning_rate": 2})
    text = describe_validation_error(err.value, what="sft spec")
    assert text == "invalid sft spec: lerning_rate: unknown field"


def test_user_input_names_nested_bad_value() -> None:
    with pytest.raises(ValidationError) as err:
        ExampleSpec.model_validate({"learning_rate": -1})
    assert "learning_rate: Input should be greater than 0" in describe_validation_error(err.value)


def test_message_tolerates_unknown_fields_and_is_frozen() -> None:
    ev = RunProgressed.model_validate({"run_id": "run-1", "service": "x", "seq": 1, "step": 1, "new_field": 3})
    assert not hasattr(ev, "new_field")
    with pytest.raises(ValidationError):
        ev.step = 2  # type: ignore[misc]


def test_every_schema_id_is_well_formed_and_resolvable() -> None:
    schemas = registered_schemas()
    assert len(schemas) >= 10
    for sid, cls in schemas.items():
        assert SCHEMA_ID_RE.match(sid), sid
        assert model_for(sid) is cls
    with pytest.raises(UnknownSchema):
        model_for("halo.nope.nothing.v1")


def test_every_field_of_every_wire_model_is_described() -> None:
    missing = [
        f"{sid}.{name}"
        for sid, cls in registered_schemas().items()
        if not sid.startswith(("halo.test.", "halo.bench."))
        for name, field in cls.model_fields.items()
        if not field.description
    ]
    assert missing == []


def test_duplicate_schema_id_is_refused() -> None:
    with pytest.raises(TypeError, match="declared by both"):
        class Clash(Message):  # noqa: F841
            schema_id = "halo.evt.run-progressed.v1"


def test_bad_schema_id_is_refused() -> None:
    with pytest.raises(TypeError, match="must look like"):
        class Bad(UserInput):  # noqa: F841
            schema_id = "not-a-schema"


def test_json_schema_export_is_current() -> None:
    # Test-only models (halo.test.*) are not exported; compare only the shipped ones.
    stale = [n for n in stale_files(DOCS) if not n.startswith(("halo.test.", "halo.bench."))]
    assert stale == [], f"docs/schemas is stale ({stale}); run `just schemas`"


def test_non_finite_metrics_survive_the_wire() -> None:
    import math

    ev = RunProgressed(run_id="run-1", service="x", seq=1, step=3, metrics={"loss": float("nan"), "grad_norm": float("inf")})
    back = RunProgressed.model_validate_json(ev.model_dump_json())
    assert math.isnan(back.metrics["loss"]) and back.metrics["grad_norm"] == float("inf")
