"""Adapters in both formats: mlx-lm's (``adapters.safetensors`` + its ``adapter_config.json``) and PEFT's
(``adapter_model.safetensors`` + ``adapter_config.json``), so serve, merge, convert and trainer-torch use an
MLX-trained adapter, and a PEFT adapter can be loaded into an MLX model.

The mapping, per adapted linear layer ``<path>`` (mlx-lm keeps Hugging Face module names):

* mlx-lm ``<path>.lora_a`` (in, r)  <->  PEFT ``base_model.model.<path>.lora_A.weight`` (r, in)  (transposed)
* mlx-lm ``<path>.lora_b`` (r, out) <->  PEFT ``base_model.model.<path>.lora_B.weight`` (out, r) (transposed)
* DoRA: mlx-lm ``<path>.m`` (out,)  <->  PEFT ``base_model.model.<path>.lora_magnitude_vector`` (out,)
* scale: mlx-lm ``scale`` = PEFT ``lora_alpha / r``.

Both compute ``W x + scale * B A x`` (DoRA: rescaled row-wise by ``m / ||W + scale * B A||``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from halo_common.errors import Unprocessable

PEFT_PREFIX = "base_model.model."


def adapter_tensors(model: Any) -> dict[str, Any]:
    """mlx-lm adapter parameters (``lora_a``, ``lora_b``, DoRA ``m``) by their model path."""
    from mlx.utils import tree_flatten

    return {k: v for k, v in tree_flatten(model.trainable_parameters()) if k.rsplit(".", 1)[-1] in ("lora_a", "lora_b", "m")}


def save_mlx_adapter(model: Any, out: Path, config: dict[str, Any]) -> None:
    import mlx.core as mx

    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), adapter_tensors(model))
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def mlx_to_peft(tensors: dict[str, Any], *, rank: int, scale: float, dora: bool, base_model: str,
                dropout: float = 0.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """(PEFT state dict as numpy float32 arrays, PEFT adapter_config) from mlx-lm adapter tensors."""
    import mlx.core as mx
    import numpy as np

    state: dict[str, Any] = {}
    modules: set[str] = set()
    for key, value in tensors.items():
        path, leaf = key.rsplit(".", 1)
        arr = np.array(value.astype(mx.float32))
        if leaf == "lora_a":
            state[f"{PEFT_PREFIX}{path}.lora_A.weight"] = np.ascontiguousarray(arr.T)
        elif leaf == "lora_b":
            state[f"{PEFT_PREFIX}{path}.lora_B.weight"] = np.ascontiguousarray(arr.T)
        elif leaf == "m":
            state[f"{PEFT_PREFIX}{path}.lora_magnitude_vector"] = arr
        modules.add(path.rsplit(".", 1)[-1])
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": rank, "lora_alpha": scale * rank, "lora_dropout": dropout, "target_modules": sorted(modules),
        "use_dora": dora, "use_rslora": False, "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True,
        "inference_mode": True, "modules_to_save": None,
    }
    return state, config


def save_peft_adapter(model: Any, out: Path, *, rank: int, scale: float, dora: bool, base_model: str,
                      dropout: float = 0.0) -> None:
    from safetensors.numpy import save_file

    state, config = mlx_to_peft(adapter_tensors(model), rank=rank, scale=scale, dora=dora, base_model=base_model,
                                dropout=dropout)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_peft_adapter(model: Any, adapter_dir: Path) -> dict[str, Any]:
    """Add mlx-lm LoRA/DoRA layers matching a PEFT adapter to ``model`` and load its weights (to continue
    training it on MLX, or to compare outputs). Returns the PEFT config."""
    import mlx.core as mx
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from safetensors.numpy import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("peft_type") != "LORA" or cfg.get("use_rslora"):
        raise Unprocessable(f"{adapter_dir}: only plain LoRA / DoRA PEFT adapters load on the mlx backend", param="adapter")
    state = load_file(str(adapter_dir / "adapter_model.safetensors"))
    paths = sorted({k[len(PEFT_PREFIX):].rsplit(".lora_", 1)[0] for k in state})
    layer_keys = sorted({p.split(".", 3)[3] for p in paths if p.startswith("model.layers.")})
    rank = int(cfg["r"])
    linear_to_lora_layers(model, len(model.layers), {"rank": rank, "scale": float(cfg["lora_alpha"]) / rank,
                                                     "dropout": 0.0, "keys": layer_keys},
                          use_dora=bool(cfg.get("use_dora")))
    weights = []
    for key, arr in state.items():
        path = key[len(PEFT_PREFIX):]
        if path.endswith(".lora_A.weight"):
            weights.append((path[: -len(".lora_A.weight")] + ".lora_a", mx.array(arr.T)))
        elif path.endswith(".lora_B.weight"):
            weights.append((path[: -len(".lora_B.weight")] + ".lora_b", mx.array(arr.T)))
        elif path.endswith(".lora_magnitude_vector") or path.endswith(".lora_magnitude_vector.weight"):
            weights.append((path.split(".lora_magnitude_vector")[0] + ".m", mx.array(arr)))
    model.load_weights(weights, strict=False)
    return cfg
