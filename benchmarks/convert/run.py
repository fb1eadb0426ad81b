"""GGUF q8 export: ours (halo convert, --no-verify) vs llama.cpp's converter + quantizer run by hand
on the same checkpoint. Prints the wall-time ratio (target <= 1.1x) and the verify's own time.

    python benchmarks/convert/run.py [--size small|tiny] [--repeats 3]

Writes benchmarks/results/convert.json. The baseline is what a user would type: llama.cpp's
``convert_hf_to_gguf.py --outtype f32`` then ``llama_model_quantize(Q8_0)``, the same two steps
ours takes; the ratio shows the overhead of our orchestration (spec validation, source resolution,
hashing, manifest)."""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import llama_cpp
    from halo_models.tiny import make_tiny_cached
    from halo_schemas.convert import ConvertSpec
    from halo_serve.core.convert import convert, verify_export
    from halo_serve.core.convert.exporters import gguf_convert_cmd

    src = make_tiny_cached(arch="qwen2", size=args.size)
    ours, base = [], []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for i in range(args.repeats):
            # Baseline: the converter script (with the same tokenizer shim: without it llama.cpp refuses
            # our tokenizer) and the quantizer binding, by hand.
            t0 = time.perf_counter()
            subprocess.run(gguf_convert_cmd(src, t / f"b{i}-f32.gguf", "f32"), check=True, capture_output=True)
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
            assert llama_cpp.llama_model_quantize(str(t / f"b{i}-f32.gguf").encode(),
                                                  str(t / f"b{i}-q8.gguf").encode(), ctypes.byref(params)) == 0
            base.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            m = convert(ConvertSpec(source=str(src), format="gguf", quant="q8", out=str(t / f"o{i}.gguf"), verify=False))
            ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        report = verify_export(src, m.path, "gguf", "q8")
        verify_s = time.perf_counter() - t0
    ratio = statistics.median(ours) / statistics.median(base)
    result = {"model": src.name, "repeats": args.repeats, "ours_s": ours, "baseline_s": base,
              "ratio_median": ratio, "target": 1.1, "verify_s": verify_s, "verify_passed": report.passed,
              "size_bytes": m.size_bytes}
    print(f"GGUF q8 export of {src.name}: ours {statistics.median(ours):.2f}s vs llama.cpp by hand "
          f"{statistics.median(base):.2f}s -> ratio {ratio:.3f}x (target <= 1.1x); verify {verify_s:.2f}s "
          f"({'passed' if report.passed else 'FAILED'})")
    out = Path(__file__).resolve().parents[1] / "results" / "convert.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
