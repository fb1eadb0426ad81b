"""convert (HF / GGUF / MLX x fp32 / fp16 / bf16 / q8 / q4, with a round-trip verify) and merge
(bake / combine adapters). Pure logic: the serve service runs these as jobs, the CLI can run them
in-process; both record the result in the registry through :mod:`.record`.

    from halo_schemas.convert import ConvertSpec
    from halo_serve.core.convert import convert

    m = convert(ConvertSpec(source="/models/tiny", format="gguf", quant="q8"))
    m.status          # "verified" | "failed" | "unverified"
    m.verify.kl_mean  # figures, also in halo_artifact.json beside the output
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from halo_schemas.convert import ArtifactManifest, ConvertSpec

from halo_serve.core.convert.common import (
    check_pair,
    default_out,
    prepare_out,
    read_manifest,
    supported_matrix,
    tree_sha256,
    write_manifest,
)
from halo_serve.core.convert.exporters import export_gguf, export_hf, export_mlx
from halo_serve.core.convert.merge import bake, combine
from halo_serve.core.convert.sources import resolve_model
from halo_serve.core.convert.verify import format_report, verify_export

__all__ = ["bake", "combine", "convert", "format_report", "read_manifest", "supported_matrix", "verify_export"]

EXPORTERS = {"hf": export_hf, "gguf": export_gguf, "mlx": export_mlx}


def _default_name(source: str) -> str:
    return source[4:] if source.startswith("run:") else Path(source.rstrip("/")).name or "model"


def convert(spec: ConvertSpec, progress: Callable[[str], None] | None = None) -> ArtifactManifest:
    """Export ``spec.source`` and verify it (unless ``spec.verify`` is False).

    Returns the manifest (also written beside the output); a failed verify does not raise — the
    manifest says ``status="failed"`` and the caller exits non-zero."""
    say = progress or (lambda _msg: None)
    check_pair(spec.format, spec.quant)
    suffix = ".gguf" if spec.format == "gguf" else ""
    out = Path(spec.out) if spec.out else default_out(f"{_default_name(spec.source)}-{spec.format}-{spec.quant}", suffix)
    prepare_out(out, spec.overwrite)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".convert-") as work:
        say(f"resolving {spec.source}")
        src = resolve_model(spec.source, Path(work))
        say(f"exporting {src.path} -> {out} ({spec.format} {spec.quant})")
        t0 = time.perf_counter()
        try:
            EXPORTERS[spec.format](src.path, out, spec.quant)
        except BaseException:
            if out.is_dir():
                shutil.rmtree(out, ignore_errors=True)
            elif out.exists():
                out.unlink()
            raise
        seconds = time.perf_counter() - t0
        report = None
        if spec.verify:
            say("verifying the round trip")
            report = verify_export(src.path, out, spec.format, spec.quant, spec.prompts, spec.max_new_tokens)
            say(format_report(report))
    sha, size = tree_sha256(out)
    manifest = ArtifactManifest(
        kind="export", format=spec.format, quant=spec.quant, path=str(out), size_bytes=size, sha256=sha,
        parents=src.parents, status="unverified" if report is None else ("verified" if report.passed else "failed"),
        verify=report, job="convert", spec=spec.model_dump(mode="json"), seconds=seconds,
    )
    write_manifest(manifest)
    return manifest
