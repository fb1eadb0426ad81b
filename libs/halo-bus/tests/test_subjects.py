import pytest
from halo_bus import subjects


def test_subject_builders() -> None:
    assert subjects.rpc("registry", "health") == "halo.rpc.registry.health"
    assert subjects.job("trainer-torch", "sft") == "halo.job.trainer-torch.sft"
    assert subjects.run_event("trainer-torch", "run-01AB", "progressed") == "halo.evt.trainer-torch.run.run-01AB.progressed"


@pytest.mark.parametrize("bad", [("nope", "health"), ("registry", "has space"), ("registry", "a.b"), ("registry", "")])
def test_invalid_tokens_are_refused(bad: tuple[str, str]) -> None:
    with pytest.raises(ValueError):
        subjects.rpc(*bad)


def test_wildcard_matching() -> None:
    assert subjects.matches("halo.evt.*.run.>", "halo.evt.trainer-torch.run.run-1.started")
    assert subjects.matches(subjects.run_events_filter("run-1"), "halo.evt.rollout.run.run-1.progressed")
    assert not subjects.matches(subjects.run_events_filter("run-1"), "halo.evt.rollout.run.run-2.progressed")
    assert not subjects.matches("halo.job.>", "halo.job")
    assert not subjects.matches("a.*", "a.b.c")


def test_messaging_doc_is_current() -> None:
    from pathlib import Path

    doc = Path(__file__).resolve().parents[3] / "docs" / "messaging.md"
    assert doc.read_text() == subjects.render_messaging_md(), "docs/messaging.md is stale: run `just docs`"
