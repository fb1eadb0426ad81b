"""Writing a finished run's weights: ``adapter/`` (PEFT, what serve / merge / trainer-torch read) and
``adapter_mlx/`` (mlx-lm's format) for adapter runs; ``final/`` (an HF model directory) for full finetuning
or ``merge_adapter``. Each directory is written under a temporary name and renamed into place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from halo_trainer_mlx.core.context import JobContext
from halo_trainer_mlx.core.model import lora_scale
from halo_trainer_mlx.core.peft import save_mlx_adapter, save_peft_adapter

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt")


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def save_hf_model(model: Any, base_dir: str, out: Path) -> None:
    """An HF-format directory: the weights under their HF names, the base's config and tokenizer files."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "pt"})
    base = Path(base_dir)
    config = json.loads((base / "config.json").read_text())
    dtypes = {str(v.dtype).rsplit(".", 1)[-1] for v in weights.values()}
    if len(dtypes) == 1:
        config["dtype"] = dtypes.pop()
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES + ("generation_config.json",):
        if (base / name).is_file():
            shutil.copy2(base / name, out / name)


def save_peft_with_tokenizer(ctx: JobContext, model: Any, out: Path) -> None:
    """The run's adapter in PEFT format with the base's tokenizer files (what serve and eval load)."""
    spec = ctx.spec
    save_peft_adapter(model, out, rank=spec.lora.rank, scale=lora_scale(spec), dora=spec.finetune == "dora",
                      base_model=spec.model, dropout=spec.lora.dropout)
    for name in TOKENIZER_FILES:
        src = Path(ctx.resolved.model_path) / name
        if src.is_file():
            shutil.copy2(src, out / name)


def save_eval_model(ctx: JobContext, model: Any, out: Path) -> None:
    """The current weights as the eval service loads them: a PEFT adapter, or an HF model for full finetuning."""
    if ctx.spec.finetune == "full":
        save_hf_model(model, ctx.resolved.model_path, out)
    else:
        save_peft_with_tokenizer(ctx, model, out)


def export_model(ctx: JobContext, model: Any, adapter_config: dict[str, Any]) -> dict[str, str]:
    """Write the outputs of ``ctx``'s run; report each as an artifact; returns name -> path."""
    spec, run = ctx.spec, ctx.run
    outputs: dict[str, str] = {}
    if spec.finetune == "full":
        tmp = _fresh(run.root / "final.tmp")
        save_hf_model(model, ctx.resolved.model_path, tmp)
        outputs["final"] = str(run.publish_dir(tmp, run.final))
        ctx.reporter.artifact("model", "hf", outputs["final"])
        return outputs
    tmp = _fresh(run.root / "adapter.tmp")
    save_peft_with_tokenizer(ctx, model, tmp)
    outputs["adapter"] = str(run.publish_dir(tmp, run.adapter))
    ctx.reporter.artifact("adapter", "peft", outputs["adapter"])
    tmp = _fresh(run.root / "adapter_mlx.tmp")
    save_mlx_adapter(model, tmp, adapter_config)
    outputs["adapter_mlx"] = str(run.publish_dir(tmp, run.root / "adapter_mlx"))
    ctx.reporter.artifact("adapter", "mlx", outputs["adapter_mlx"])
    if spec.merge_adapter:
        from mlx.utils import tree_unflatten

        fused = [(name, module.fuse()) for name, module in model.named_modules() if hasattr(module, "fuse")]
        model.update_modules(tree_unflatten(fused))
        tmp = _fresh(run.root / "final.tmp")
        save_hf_model(model, ctx.resolved.model_path, tmp)
        outputs["final"] = str(run.publish_dir(tmp, run.final))
        ctx.reporter.artifact("model", "hf", outputs["final"])
    return outputs
