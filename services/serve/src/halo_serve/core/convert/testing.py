"""Models and deliberately broken exports for testing the convert round trip.

* :func:`confident_copy` — a tiny random model predicts near-uniform distributions, on which any
  export "agrees" (KL ~1e-6 even with a layer missing). Scaling the output head makes its
  predictions as peaked as a trained model's, so the verify's figures mean something.
* :func:`swap_gguf_tensors`, :func:`zero_mlx_layer`, :func:`replace_tokenizer` — the broken
  exports every peer's converter can produce silently; the verify must reject each.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def confident_copy(src: Path, dst: Path, scale: float = 25.0) -> Path:
    """Copy the HF model in ``src`` to ``dst`` with ``lm_head`` scaled by ``scale``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    st = Path(dst) / "model.safetensors"
    tensors = load_file(st)
    tensors["lm_head.weight"] = (tensors["lm_head.weight"] * scale).contiguous()
    save_file(tensors, st, metadata={"format": "pt"})
    return Path(dst)


def swap_gguf_tensors(path: Path, a: str, b: str) -> None:
    """Swap the data of two same-shape, same-type tensors of a GGUF file in place (e.g.
    ``blk.0.attn_q.weight`` and ``blk.0.attn_output.weight``): the file still loads."""
    import sys

    from halo_serve.core.convert.common import llama_cpp_dir

    lcpp = llama_cpp_dir()
    if lcpp is not None and str(lcpp / "gguf-py") not in sys.path:
        sys.path.insert(0, str(lcpp / "gguf-py"))
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    t = {x.name: x for x in reader.tensors}
    ta, tb = t[a], t[b]
    if ta.n_bytes != tb.n_bytes or ta.tensor_type != tb.tensor_type or list(ta.shape) != list(tb.shape):
        raise ValueError(f"{a} and {b} differ in shape or type")
    oa, ob, n = int(ta.data_offset), int(tb.data_offset), int(ta.n_bytes)
    del reader, t, ta, tb  # release the memory map before writing
    with open(path, "r+b") as f:
        f.seek(oa)
        da = f.read(n)
        f.seek(ob)
        db = f.read(n)
        f.seek(oa)
        f.write(db)
        f.seek(ob)
        f.write(da)


def zero_mlx_layer(mlx_dir: Path, layer: int = 0) -> None:
    """Zero every tensor of decoder layer ``layer`` of an MLX export (quantized: weights, scales, biases)."""
    import mlx.core as mx

    for st in Path(mlx_dir).glob("*.safetensors"):
        weights = mx.load(str(st))
        hit = {k: mx.zeros_like(v) for k, v in weights.items() if f".layers.{layer}." in k}
        if hit:
            weights.update(hit)
            mx.save_safetensors(str(st), weights, metadata={"format": "mlx"})


def replace_tokenizer(export_dir: Path, other_model_dir: Path) -> None:
    """Overwrite an HF/MLX export's tokenizer files with another model's."""
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        if (Path(other_model_dir) / name).is_file():
            shutil.copy2(Path(other_model_dir) / name, Path(export_dir) / name)
