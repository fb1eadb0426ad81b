"""merge: bake one adapter into its base, or combine N adapters of one base (PEFT).

    bake(MergeBakeSpec(adapter="run:run-01J…"))                       # -> HF checkpoint
    combine(MergeCombineSpec(adapters=[a, b], method="ties", density=0.5, bake=True))

``linear`` is the exact weighted sum of the adapters' updates, ΔW = Σ wᵢ·ΔWᵢ: PEFT's ``cat``
(rank Σrᵢ, exact) or ``svd`` (rank ``svd_rank``) under the hood. PEFT's own ``linear`` mixes the A
and B factors separately, so its result has cross terms (combining an adapter with itself at
0.5/0.5 doubles it) — not a weighted average. ``ties | dare_linear | dare_ties | magnitude_prune``
are PEFT's, applied to the factors, or to ΔW when ``svd_rank`` is set (``<method>_svd``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from halo_common.errors import BadRequest
from halo_schemas.convert import ArtifactManifest, MergeBakeSpec, MergeCombineSpec

from halo_serve.core.convert.common import default_out, prepare_out, tree_sha256, write_manifest
from halo_serve.core.convert.sources import adapter_base, is_adapter, local_dir

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _load_base(base_dir: Path, dtype: str = "fp32") -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, TORCH_DTYPES[dtype]))


def _save_model(model: Any, base_dir: Path, out: Path, dtype: str) -> None:
    """Save a plain HF model in ``dtype`` with the base's tokenizer, chat template and generation config."""
    import torch
    from transformers import AutoTokenizer

    model = model.to(getattr(torch, TORCH_DTYPES[dtype]))
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    for extra in ("chat_template.jinja", "generation_config.json"):
        if (base_dir / extra).is_file() and not (out / extra).exists():
            shutil.copy2(base_dir / extra, out / extra)


def bake_to(base_dir: Path, adapter_dir: Path, out: Path, dtype: str = "fp32") -> Path:
    """Merge the adapter in ``adapter_dir`` into the model in ``base_dir`` and save to ``out``."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(_load_base(base_dir), str(adapter_dir))
    merged = model.merge_and_unload()
    _save_model(merged, Path(base_dir), Path(out), dtype)
    return Path(out)


def _adapter_dirs(srcs: list[str]) -> tuple[list[Path], list[str]]:
    dirs, parents = [], []
    for i, s in enumerate(srcs):
        d, p, _ = local_dir(s, param=f"adapters[{i}]" if len(srcs) > 1 else "adapter")
        if not is_adapter(d):
            raise BadRequest(f"{s} is not a PEFT adapter (no adapter_config.json)", param=f"adapters[{i}]")
        dirs.append(d)
        parents += p
    return dirs, parents


def _finish(kind: str, fmt: str, out: Path, parents: list[str], job: str, spec: Any, t0: float) -> ArtifactManifest:
    sha, size = tree_sha256(out)
    m = ArtifactManifest(kind=kind, format=fmt, quant=getattr(spec, "dtype", None), path=str(out), size_bytes=size,
                         sha256=sha, parents=parents, status="unverified", job=job,
                         spec=spec.model_dump(mode="json"), seconds=time.perf_counter() - t0)
    write_manifest(m)
    return m


def bake(spec: MergeBakeSpec) -> ArtifactManifest:
    """Bake ``spec.adapter`` into its base; returns the manifest (also written beside the output)."""
    t0 = time.perf_counter()
    (adapter,), parents = _adapter_dirs([spec.adapter])
    base_dir, base_parents, _ = local_dir(spec.base or adapter_base(adapter), param="base")
    out = Path(spec.out) if spec.out else default_out(f"{adapter.parent.name}-{adapter.name}-baked")
    prepare_out(out, spec.overwrite)
    bake_to(base_dir, adapter, out, spec.dtype)
    return _finish("model", "hf", out, parents + base_parents, "merge-bake", spec, t0)


def combine(spec: MergeCombineSpec) -> ArtifactManifest:
    """Combine ``spec.adapters``; writes a PEFT adapter, or an HF checkpoint with ``bake=True``."""
    from peft import PeftModel

    t0 = time.perf_counter()
    dirs, parents = _adapter_dirs(spec.adapters)
    base_dir, base_parents, _ = local_dir(spec.base or adapter_base(dirs[0]), param="base")
    names = [f"a{i}" for i in range(len(dirs))]
    model = PeftModel.from_pretrained(_load_base(base_dir), str(dirs[0]), adapter_name=names[0])
    for name, d in zip(names[1:], dirs[1:], strict=True):
        model.load_adapter(str(d), adapter_name=name)
    weights = spec.weights or [1.0 / len(dirs)] * len(dirs)
    method = spec.method
    if method == "linear":
        ctype = "svd" if spec.svd_rank else "cat"
    else:
        ctype = f"{method}_svd" if spec.svd_rank else method
        ranks = {model.peft_config[n].r for n in names}
        if len(ranks) > 1 and not spec.svd_rank:
            raise BadRequest(f"adapters have different ranks {sorted(ranks)}; {method} needs equal ranks or --svd-rank",
                             param="svd_rank")
    kwargs: dict[str, Any] = {"combination_type": ctype}
    if method != "linear":
        kwargs["density"] = spec.density if spec.density is not None else 0.5
    if spec.svd_rank:
        kwargs["svd_rank"] = spec.svd_rank
    try:
        model.add_weighted_adapter(names, weights, adapter_name="combined", **kwargs)
    except ValueError as e:  # PEFT: mismatched targets, ranks ...
        raise BadRequest(f"cannot combine these adapters with {method}: {e}", param="adapters") from None
    model.set_adapter("combined")
    for n in names:
        model.delete_adapter(n)
    out = Path(spec.out) if spec.out else default_out(f"combined-{method}{'-baked' if spec.bake else ''}")
    prepare_out(out, spec.overwrite)
    if spec.bake:
        _save_model(model.merge_and_unload(), base_dir, out, "fp32")
        return _finish("model", "hf", out, parents + base_parents, "merge-combine", spec, t0)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        model.save_pretrained(tmp, selected_adapters=["combined"])
        saved = Path(tmp) / "combined" if (Path(tmp) / "combined").is_dir() else Path(tmp)
        cfg_path = saved / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = str(base_dir)  # so `merge bake` / serve find the base again
        cfg_path.write_text(json.dumps(cfg, indent=2))
        shutil.move(str(saved), out)
    return _finish("adapter", "peft", out, parents + base_parents, "merge-combine", spec, t0)
