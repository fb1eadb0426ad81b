"""What trainer-mlx can honour, checked on the validated spec before any data or model is read.

A field MLX cannot honour is refused with :class:`~halo_common.errors.Unprocessable` naming the field, the
capability and the backend — never silently ignored::

    check_spec("sft", spec)   # Unprocessable("finetune='rslora': rank-stabilised LoRA is not available on the
                              #  mlx backend (trainer-mlx); use finetune=lora or dora, or backend=torch", param="finetune")

:data:`MLX_CAPABILITIES` is the matrix docs/mlx.md shows.
"""

from __future__ import annotations

from halo_common.errors import Unprocessable
from halo_schemas.training import TrainSpecBase
from halo_training.rl_prompts import register_rl_formats

register_rl_formats("grpo", "raft")  # the shared data loader accepts the RL record formats for RL jobs

#: Job types trainer-mlx runs (the others are refused with the reason).
METHODS = ("sft", "dpo", "orpo", "rm", "grpo", "raft")
#: Methods trainer-torch runs that trainer-mlx refuses, with the reason (docs/mlx.md).
NOT_ON_MLX: dict[str, str] = {}

#: capability -> supported on trainer-mlx (the rest of the matrix is in docs/mlx.md).
MLX_CAPABILITIES = {
    "finetune=full": True, "finetune=lora": True, "finetune=dora": True,
    "finetune=rslora": False, "finetune=pissa": False, "finetune=qlora": False,
    "packing": True, "completion_only_loss": True, "grad_accum": True, "gradient_checkpointing": True,
    "num_processes>1 (ddp, fsdp, deepspeed)": False, "attn_implementation=flash_attention_2": False,
    "lora.modules_to_save": False, "probe": True, "probe (rm)": False, "trust_remote_code": False,
    "early_stopping": True, "merge_adapter": True, "sample_prompts": True,
    "grpo": True, "grpo.loss_type=grpo|dapo|dr_grpo|bnpo": True, "grpo.loss_type=cispo|sapo|luspo|vespo": False,
    "grpo.importance_sampling_level=token|sequence": True, "grpo.generation=trl": False, "raft": True, "raft.probe": False,
}

#: GRPO loss aggregations implemented on MLX (the others are TRL-only today).
GRPO_LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo")

_FINETUNE_REASONS = {
    "rslora": "rank-stabilised LoRA (rsLoRA)",
    "pissa": "PiSSA initialisation",
    "qlora": "QLoRA (bitsandbytes 4-bit)",
}


def _refuse(param: str, value: object, capability: str, hint: str) -> Unprocessable:
    return Unprocessable(f"{param}={value!r}: {capability} is not available on the mlx backend (trainer-mlx); {hint}",
                         param=param)


def check_spec(method: str, spec: TrainSpecBase) -> None:
    """Raise Unprocessable for the first spec field this backend cannot honour."""
    if method in NOT_ON_MLX:
        raise Unprocessable(f"method {method!r}: {NOT_ON_MLX[method]} (trainer-mlx); run it with backend=torch",
                            param="method")
    if spec.finetune in _FINETUNE_REASONS:
        raise _refuse("finetune", spec.finetune, _FINETUNE_REASONS[spec.finetune],
                      "use finetune=lora, dora or full, or backend=torch")
    if spec.num_processes > 1:
        raise _refuse("num_processes", spec.num_processes,
                      f"multi-process training ({spec.distributed.upper()})", "use num_processes=1, or backend=torch")
    if spec.attn_implementation == "flash_attention_2":
        raise _refuse("attn_implementation", spec.attn_implementation, "flash-attention 2",
                      "use auto (MLX's fused attention)")
    if spec.finetune != "full" and spec.lora.modules_to_save:
        raise _refuse("lora.modules_to_save", spec.lora.modules_to_save, "fully trained extra modules next to an adapter",
                      "leave it empty, or use backend=torch")
    if spec.probe is not None:
        _check_probe(method, spec)
    if method == "grpo":
        _check_grpo(spec)
    if spec.trust_remote_code:
        raise _refuse("trust_remote_code", True, "model code shipped with a checkpoint",
                      "mlx-lm runs only its own architectures")


def _check_probe(method: str, spec: TrainSpecBase) -> None:
    assert spec.probe is not None
    if method == "raft":
        raise _refuse("probe", "set", "probing each RAFT cycle's policy",
                      "leave probe unset, or use backend=torch")
    if method == "rm":
        raise _refuse("probe", "set", "probing a reward model (its checkpoints are not language models to evaluate)",
                      "leave probe unset, or use backend=torch")
    every = spec.probe.every_n_steps
    if every is not None and every % spec.checkpoint_every_steps:
        raise Unprocessable(f"probe.every_n_steps ({every}) must be a multiple of checkpoint_every_steps "
                            f"({spec.checkpoint_every_steps}): probes run on checkpoints", param="probe.every_n_steps")


def _check_grpo(spec: TrainSpecBase) -> None:
    loss_type = getattr(spec, "loss_type", "dapo")
    if loss_type not in GRPO_LOSS_TYPES:
        raise _refuse("loss_type", loss_type, f"the {loss_type} GRPO objective",
                      f"use loss_type {', '.join(GRPO_LOSS_TYPES)}, or backend=torch")
    if spec.gradient_checkpointing:
        raise _refuse("gradient_checkpointing", True, "gradient checkpointing in GRPO (its rollouts run the same layers)",
                      "leave it unset, or use backend=torch")
    if getattr(spec, "generation", "rollout") == "trl":
        raise _refuse("generation", "trl", "TRL's model.generate", "use generation=rollout (MLX sampling)")
