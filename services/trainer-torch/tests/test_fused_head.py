"""The fused LM head scoring only trained positions on CPU: same log-probs, loss and gradients, fewer rows."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from halo_trainer_torch.core.components import fused_head
from transformers import AutoModelForCausalLM
from trl.trainer import utils as trl_utils
from trl.trainer.utils import add_fused_lm_head


@pytest.fixture
def trl_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """TRL's own compaction choice for the test, whatever ran before in this process (the switch is
    process-wide: any recipe test turns it on), and the switch as it was afterwards."""
    current = trl_utils._use_triton
    monkeypatch.setattr(trl_utils, "_use_triton", getattr(current, "triton_choice", current))


def _scored_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record how many positions each fused-head call projects through the LM head."""
    rows: list[int] = []
    original = trl_utils._ChunkedLogProbFunction

    class Recording(original):  # type: ignore[misc, valid-type]
        @staticmethod
        def forward(ctx: Any, hidden: torch.Tensor, *args: Any) -> Any:
            rows.append(hidden.shape[0])
            return original.forward(ctx, hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Recording)
    return rows


def _forward_backward(model: Any, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor]]:
    model.zero_grad()
    out = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_trained_positions_only_give_the_same_log_probs_and_gradients(
        tiny_model_dir: str, trl_choice: None, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).to("cpu")
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    input_ids = torch.randint(3, model.config.vocab_size, (2, 24))
    labels = input_ids.clone()
    labels[0, :10] = -100  # a prompt
    labels[1, :4] = -100
    labels[1, 20:] = -100  # padding
    trained = int((labels[:, 1:] != -100).sum())
    rows = _scored_rows(monkeypatch)

    want, want_grads = _forward_backward(model, input_ids, labels)
    assert fused_head.score_trained_positions_only()
    got, got_grads = _forward_backward(model, input_ids, labels)

    assert rows == [2 * 23, trained]  # every position, then only the trained ones
    assert torch.equal(got.label_mask, want.label_mask)
    for field in ("log_probs", "entropy", "is_top1"):
        assert torch.allclose(getattr(got, field).float(), getattr(want, field).float(), atol=1e-5), field
    assert torch.allclose(got.loss, want.loss, atol=1e-6)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        assert torch.allclose(got_grads[name], grad, atol=1e-6), name


def test_the_switch_is_idempotent_and_keeps_static_shapes_under_compile(
        trl_choice: None, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert not trl_utils._use_triton(cpu)  # TRL's own choice on a CPU
    assert fused_head.score_trained_positions_only()
    decide = trl_utils._use_triton
    assert fused_head.score_trained_positions_only()
    assert trl_utils._use_triton is decide  # not wrapped twice
    assert decide(cpu) and decide(torch.device("mps"))
    assert not decide(torch.device("meta"))  # neither eager nor Triton: TRL's choice
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not decide(cpu)  # inside a torch.compile trace the shapes stay static, as TRL wants
