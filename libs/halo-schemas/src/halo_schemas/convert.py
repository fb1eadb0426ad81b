"""convert and merge: export specs (HF / GGUF / MLX x quantization), adapter merge specs, the
round-trip verify report and the manifest written next to every output (``halo_artifact.json``).

Used by ``halo-forge convert`` / ``halo-forge merge`` and the serve service's convert jobs::

    ConvertSpec(source="run:run-01J…", format="gguf", quant="q8")
    MergeCombineSpec(adapters=["/a", "/b"], method="ties", density=0.5, bake=True)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, model_validator

from halo_schemas.base import Message, utcnow
from halo_schemas.jobs import JobSpecBase

ExportFormat = Literal["hf", "gguf", "mlx"]
Quant = Literal["fp32", "fp16", "bf16", "q8", "q4"]
CombineMethod = Literal["linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"]
ArtifactStatus = Literal["verified", "failed", "unverified"]

#: Every (format, quantization) pair the converters implement; a host may support fewer
#: (``halo-forge convert --list`` shows what this one can do).
SUPPORTED_QUANTS: dict[str, tuple[str, ...]] = {
    "hf": ("fp32", "fp16", "bf16"),
    "gguf": ("fp32", "fp16", "bf16", "q8", "q4"),
    "mlx": ("fp32", "fp16", "bf16", "q8", "q4"),
}


class ConvertSpec(JobSpecBase):
    """Export one model to another format/quantization, then (by default) verify the round trip."""

    schema_id = "halo.job.convert.v1"

    source: str = Field(
        description="HF model directory, PEFT adapter directory (merged into its base first), "
        "'run:<run_id>' (the run's adapter merged into its base, or its full model), or a Hub id.",
        min_length=1,
    )
    format: ExportFormat = Field(description="Output format: hf | gguf | mlx.")
    quant: Quant = Field(default="fp16", description="fp32 | fp16 | bf16 | q8 | q4 (q8/q4: gguf and mlx only).")
    out: str | None = Field(default=None, description="Output path (a .gguf file or a directory); default under HALO_HOME/models.")
    verify: bool = Field(default=True, description="Round-trip check of the export against the source.")
    prompts: list[str] | None = Field(default=None, description="Verify prompts (default: a fixed built-in set).")
    max_new_tokens: int = Field(default=16, ge=1, le=256, description="Greedy continuation length the verify compares.")
    overwrite: bool = Field(default=False, description="Replace an existing output.")

    @model_validator(mode="after")
    def _pair(self) -> ConvertSpec:
        valid = SUPPORTED_QUANTS[self.format]
        if self.quant not in valid:
            raise ValueError(f"quant {self.quant!r} is not available for format {self.format!r}; choose one of {', '.join(valid)}")
        return self


class MergeBakeSpec(JobSpecBase):
    """Bake one LoRA/DoRA adapter into its base: a standard HF checkpoint (PEFT ``merge_and_unload``)."""

    schema_id = "halo.job.merge-bake.v1"

    adapter: str = Field(description="PEFT adapter directory or 'run:<run_id>'.", min_length=1)
    base: str | None = Field(default=None, description="Base model (default: the adapter's base_model_name_or_path).")
    dtype: Literal["fp32", "fp16", "bf16"] = Field(default="fp32", description="dtype of the written checkpoint.")
    out: str | None = Field(default=None, description="Output directory; default under HALO_HOME/models.")
    overwrite: bool = Field(default=False, description="Replace an existing output.")


class MergeCombineSpec(JobSpecBase):
    """Combine N adapters of one base into one (PEFT ``add_weighted_adapter``), optionally baked."""

    schema_id = "halo.job.merge-combine.v1"

    adapters: list[str] = Field(min_length=1, description="PEFT adapter directories or 'run:<run_id>' (same base).")
    method: CombineMethod = Field(default="linear", description="linear | ties | dare_linear | dare_ties | magnitude_prune.")
    weights: list[float] | None = Field(default=None, description="One weight per adapter (default: uniform 1/N).")
    density: float | None = Field(default=None, gt=0, le=1, description="Fraction of weights kept (ties/dare/magnitude_prune; default 0.5).")
    svd_rank: int | None = Field(default=None, gt=0, description="Rank of the result via SVD (needed when adapter ranks differ).")
    base: str | None = Field(default=None, description="Base model (default: the first adapter's base_model_name_or_path).")
    bake: bool = Field(default=False, description="Merge the combined adapter into the base: write one HF checkpoint.")
    out: str | None = Field(default=None, description="Output directory; default under HALO_HOME/models.")
    overwrite: bool = Field(default=False, description="Replace an existing output.")

    @model_validator(mode="after")
    def _weights(self) -> MergeCombineSpec:
        if self.weights is not None and len(self.weights) != len(self.adapters):
            raise ValueError(f"weights has {len(self.weights)} entries for {len(self.adapters)} adapters")
        if self.density is not None and self.method == "linear":
            raise ValueError("density applies to ties | dare_linear | dare_ties | magnitude_prune, not linear")
        return self


class VerifyThresholds(Message):
    """Pass limits of a round-trip verify for one quantization."""

    schema_id = "halo.convert.verify-thresholds.v1"

    min_top1: float = Field(description="Lowest teacher-forced next-token top-1 agreement accepted (0-1).")
    max_kl: float = Field(description="Highest mean KL(source || export) per position accepted (nats).")
    min_greedy: float = Field(description="Lowest greedy-continuation agreement accepted (0-1, position-wise).")
    min_tokenizer: float = Field(default=1.0, description="Fraction of prompts the export must tokenize identically.")


class VerifyReport(Message):
    """What a round-trip verify measured, the limits it used and whether it passed."""

    schema_id = "halo.convert.verify-report.v1"

    passed: bool = Field(description="Every figure within its threshold.")
    runtime: str = Field(description="Runtime the export was loaded in: transformers | llama.cpp | mlx-lm.")
    quant: str = Field(description="Quantization the thresholds belong to.")
    prompts: int = Field(ge=0, description="Prompts compared.")
    positions: int = Field(ge=0, description="Teacher-forced positions compared.")
    tokenizer_agreement: float = Field(description="Fraction of prompts tokenized identically by source and export.")
    top1_agreement: float = Field(description="Teacher-forced next-token argmax agreement.")
    kl_mean: float = Field(description="Mean KL(source || export) per position, nats.")
    kl_max: float = Field(description="Largest per-position KL, nats.")
    greedy_agreement: float = Field(description="Fraction of greedy continuation tokens equal to the source's.")
    thresholds: VerifyThresholds = Field(description="Limits applied.")
    failures: list[str] = Field(default_factory=list, description="One line per figure outside its limit.")
    seconds: float = Field(ge=0, description="Wall time of the verify.")


class ArtifactManifest(Message):
    """Written as ``halo_artifact.json`` beside each convert/merge output and recorded in the registry."""

    schema_id = "halo.convert.artifact.v1"

    kind: Literal["export", "model", "adapter"] = Field(description="export (convert) | model (baked) | adapter (combined).")
    format: str = Field(description="hf | gguf | mlx | peft.")
    quant: str | None = Field(default=None, description="Quantization (fp32 | fp16 | bf16 | q8 | q4), if any.")
    path: str = Field(description="Output file or directory.")
    size_bytes: int = Field(ge=0, description="Total bytes.")
    sha256: str = Field(description="sha256 of the file, or of the sorted 'relpath sha256' lines of a directory.")
    parents: list[str] = Field(default_factory=list, description="Sources: run ids ('run:<id>') and paths / Hub ids.")
    status: ArtifactStatus = Field(description="verified | failed | unverified (verify skipped).")
    verify: VerifyReport | None = Field(default=None, description="The round-trip verify, when run.")
    job: str = Field(description="convert | merge-bake | merge-combine.")
    spec: dict[str, Any] = Field(default_factory=dict, description="The validated spec.")
    seconds: float = Field(ge=0, description="Wall time of the export itself (verify excluded).")
    created_at: datetime = Field(default_factory=utcnow, description="UTC time written.")


class ConvertFormatsRequest(Message):
    """Ask the serve service which (format, quant) pairs its host can export and verify."""

    schema_id = "halo.rpc.convert-formats-request.v1"


class ConvertFormats(Message):
    """format -> quant -> None (available) or the reason it is not, on the serve service's host."""

    schema_id = "halo.rpc.convert-formats.v1"

    formats: dict[str, dict[str, str | None]] = Field(description="format -> quant -> null (available) or why not.")
    host: str = Field(default="", description="Host name of the serve instance that answered.")
