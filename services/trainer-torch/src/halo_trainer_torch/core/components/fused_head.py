"""Let TRL's fused LM head score only the trained positions on CPU and MPS, as it does on CUDA.

SFT, DPO, ORPO and GRPO compute their per-token log-probs through TRL's fused LM head
(``trl.trainer.utils.add_fused_lm_head``): the hidden states go through the LM head in vocabulary tiles, so the
``(tokens, vocab)`` logits are never materialised. On Triton devices (CUDA, XPU) it first keeps only the positions
whose label is not ``-100``; on every other device it scores every position and zeroes the masked ones afterwards,
because on compiled backends (Neuron, XLA) a per-batch count of valid positions changes the tile shapes and
recompiles. CPU and MPS run eagerly and pay no such cost, so there the head's matmuls (forward and backward) were
spent on prompt tokens, the prompt of every preference pair, and record ends whose result is thrown away.

:func:`score_trained_positions_only` widens TRL's choice to CPU and MPS, outside a ``torch.compile`` trace (where
the static shapes TRL wants still hold). The result is the same per-token log-probs and gradients (tested against
the unpatched head); measured in ``docs/performance.md``. It changes one module-level name TRL's head reads at call
time, so it applies to every fused head in the process, TRL's trainers' own included; where a TRL version has no
such name the call does nothing and TRL's behaviour stays.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: Devices that run the fused head eagerly, where a varying number of scored positions costs nothing.
EAGER_DEVICE_TYPES = frozenset({"cpu", "mps"})


def score_trained_positions_only() -> bool:
    """Make TRL's fused LM head skip positions without a label on CPU and MPS too. Idempotent.

    Returns whether the head now compacts on those devices (False: this TRL version has no hook for it).
    """
    import torch
    from trl.trainer import utils as trl_utils

    current = getattr(trl_utils, "_use_triton", None)
    if current is None:
        log.debug("trl.trainer.utils has no _use_triton: the fused LM head keeps TRL's own choice")
        return False
    if hasattr(current, "triton_choice"):
        return True  # already switched
    triton_choice = current

    def compact_positions(device: Any) -> bool:
        if triton_choice(device):
            return True
        return device.type in EAGER_DEVICE_TYPES and not torch.compiler.is_compiling()

    compact_positions.triton_choice = triton_choice  # type: ignore[attr-defined]  (TRL's own, kept for tests)
    trl_utils._use_triton = compact_positions
    return True
