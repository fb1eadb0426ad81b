"""Wire models of the data pipeline (service ``data``) and of datasets in the registry.

A step is a job (``halo.job.data.<type>``) whose spec is one of the ``*Spec`` models below; a recipe
(:class:`RecipeSpec`) chains steps, each step's output feeding the next. Every output can be
registered as a dataset (:class:`DatasetInfo`) with its path, rows, SHA-256, the recipe that made it and
its parent datasets; a training spec may then name it as ``dataset:<id>``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from halo_schemas.base import Message, UserInput, utcnow
from halo_schemas.jobs import JobSpecBase
from halo_schemas.verifiers import VerifierSpec

DATASET_PREFIX = "dataset:"


# ---- step parameters (shared by the one-step specs and recipe steps) ---------------------------------
class DedupParams(UserInput):
    """Exact (SHA-256 of normalised text) and fuzzy (MinHash + LSH) deduplication; first occurrence wins."""

    method: Literal["exact", "fuzzy"] = Field(
        default="fuzzy", description="exact: identical normalised text only; fuzzy: exact, then MinHash near-duplicates."
    )
    threshold: float = Field(default=0.85, gt=0, lt=1, description="Jaccard similarity at or above which a row is a near-duplicate.")
    num_perm: int = Field(default=128, ge=16, le=1024, description="MinHash permutations (more: better estimates, slower).")
    shingle_size: int = Field(default=5, ge=1, le=32, description="Shingle length, in words (or characters, see shingle_unit).")
    shingle_unit: Literal["words", "chars"] = Field(default="words", description="Shingles of words or of characters.")
    lowercase: bool = Field(default=True, description="Lowercase before hashing (normalisation).")
    workers: int = Field(default=0, ge=0, le=256, description="Processes computing signatures; 0 = one per CPU core.")
    minhash_seed: int = Field(default=1, ge=0, description="MinHash permutation seed.")


class DecontaminateParams(UserInput):
    """N-gram overlap of rows against evaluation sets; hits are removed or flagged, naming the benchmark item."""

    benchmarks: list[str] = Field(
        min_length=1,
        description="Evaluation sets: 'humaneval', 'offline' (the built-in offline suite), 'lm-eval:<task>' (tasks "
        "with local data), or a .jsonl/.json/.parquet path (its 'prompt'/'question'/'text' fields, or eval_key).",
    )
    ngram: int = Field(default=13, ge=3, le=64, description="N-gram length in words.")
    min_matches: int = Field(default=1, ge=1, description="Shared n-grams with one item that make a row contaminated.")
    mode: Literal["remove", "flag"] = Field(
        default="remove", description="remove: drop contaminated rows; flag: keep them with a 'contamination' field."
    )
    eval_key: str | None = Field(default=None, description="Field holding the text of a custom evaluation file.")


class ScoreParams(UserInput):
    """Heuristic quality signals (fair to code and math as well as prose), a weighted composite and an optional
    judge verifier. Each row gains a ``scores`` object; rejected rows name the signal that failed."""

    weights: dict[str, float] = Field(
        default_factory=dict,
        description="Signal -> weight in the composite (signals: length, repetition, symbols, format, encoding, judge); "
        "unset signals weigh 1 (judge: 2).",
    )
    minimums: dict[str, float] = Field(
        default_factory=dict, description="Signal (or 'composite') -> minimum score in [0, 1]; a row below is rejected."
    )
    min_words: int = Field(default=3, ge=0, description="Shortest text (words) that scores 1 on length.")
    max_words: int = Field(default=20000, ge=1, description="Longest text (words) that scores 1 on length.")
    judge: VerifierSpec | None = Field(
        default=None, description="Optional model-based score: a verifier (llm_judge, reward_model…) run on each row."
    )
    judge_context: dict[str, str] = Field(
        default_factory=dict, description="VerifyContext field -> record field for the judge (e.g. {'prompt': 'prompt'})."
    )
    keep_rejected: bool = Field(default=False, description="Keep rejected rows (with 'rejected_by') instead of dropping them.")


class FilterParams(UserInput):
    """Keep rows by a score column: a threshold, or the top K percent."""

    column: str = Field(default="scores.composite", description="Column to filter by; dotted paths reach into objects.")
    min: float | None = Field(default=None, description="Keep rows with column >= min.")
    max: float | None = Field(default=None, description="Keep rows with column <= max.")
    top_percent: float | None = Field(default=None, gt=0, le=100, description="Keep the best K percent by column (two passes).")
    missing: Literal["drop", "keep", "error"] = Field(default="error", description="A row without the column: drop, keep or error.")

    @model_validator(mode="after")
    def _one_rule(self) -> FilterParams:
        if self.top_percent is None and self.min is None and self.max is None:
            raise ValueError("give min, max or top_percent")
        if self.top_percent is not None and (self.min is not None or self.max is not None):
            raise ValueError("top_percent cannot be combined with min/max")
        return self


class TeacherSpec(UserInput):
    """The model that writes completions: an OpenAI-compatible endpoint (serve's /v1, vLLM, any provider) or the
    rollout service."""

    kind: Literal["openai", "rollout"] = Field(default="openai", description="openai: an OpenAI-compatible URL; rollout: the rollout service.")
    url: str | None = Field(default=None, description="Base URL of the OpenAI-compatible API, e.g. http://127.0.0.1:8080/v1.")
    model: str = Field(min_length=1, description="Model id (openai) or model path/Hub id (rollout).")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the API key (never the key itself).")
    chat: bool = Field(default=True, description="openai: use /chat/completions (else /completions).")
    timeout_s: float = Field(default=120.0, gt=0, le=3600, description="Per-request timeout.")
    max_tokens: int = Field(default=256, ge=1, le=32768, description="Tokens per completion.")
    temperature: float = Field(default=0.8, ge=0, le=5, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling.")

    @model_validator(mode="after")
    def _url(self) -> TeacherSpec:
        if self.kind == "openai" and not self.url:
            raise ValueError("teacher.url is required for an OpenAI-compatible teacher")
        return self


class SynthesizeParams(UserInput):
    """Seed prompts -> teacher -> verifier -> kept rows (sft) or chosen/rejected pairs (preference)."""

    kind: Literal["sft", "preference"] = Field(default="sft", description="sft: prompt/completion/reward; preference: chosen/rejected.")
    teacher: TeacherSpec = Field(description="The model that writes completions.")
    verifier: VerifierSpec = Field(description="Verifier (any verifier-sandbox spec) scoring each completion.")
    context_fields: dict[str, str] = Field(
        default_factory=dict,
        description="VerifyContext field -> seed record field (e.g. {'tests': 'test', 'expected': 'answer'}); seed fields "
        "named like a context field are used as they are.",
    )
    prompt_key: str | None = Field(default=None, description="Seed field with the prompt (default: prompt|text|question|instruction).")
    n: int = Field(default=1, ge=1, le=64, description="Samples per prompt (preference needs >= 2).")
    threshold: float = Field(default=0.5, description="sft: keep samples with reward >= threshold; preference: the chosen must reach it.")
    margin: float = Field(default=0.1, ge=0, description="preference: chosen reward - rejected reward must be at least this (ties dropped).")
    keep_all_passing: bool = Field(default=False, description="sft: keep every passing sample (else the best one per prompt).")
    batch_size: int = Field(default=8, ge=1, le=512, description="Seeds per teacher/verifier round; progress is saved per batch.")
    concurrency: int = Field(default=4, ge=1, le=64, description="Teacher requests in flight (openai).")
    system: str | None = Field(default=None, description="Optional system prompt for a chat teacher.")

    @model_validator(mode="after")
    def _preference_n(self) -> SynthesizeParams:
        if self.kind == "preference" and self.n < 2:
            raise ValueError("a preference dataset needs n >= 2 samples per prompt")
        return self


# ---- one-step job specs ---------------------------------------------------------------------------------
class DataStepSpec(JobSpecBase):
    """Input and output of one data step."""

    input: str = Field(min_length=1, description="Input file (.jsonl, .json, .parquet, .txt) or dataset:<id>.")
    output: str | None = Field(default=None, description="Output file (.jsonl, .json, .parquet). Default: <run dir>/<step>.jsonl.")
    text_key: str | None = Field(
        default=None, description="Field holding the text (a string, or a message list that is flattened); default: by format."
    )
    register_dataset: bool = Field(default=True, description="Register the output as a dataset in the registry.")
    dataset_name: str | None = Field(default=None, max_length=200, description="Name of the registered dataset.")


class DedupSpec(DataStepSpec, DedupParams):
    schema_id = "halo.spec.data-dedup.v1"


class DecontaminateSpec(DataStepSpec, DecontaminateParams):
    schema_id = "halo.spec.data-decontaminate.v1"


class ScoreSpec(DataStepSpec, ScoreParams):
    schema_id = "halo.spec.data-score.v1"


class FilterSpec(DataStepSpec, FilterParams):
    schema_id = "halo.spec.data-filter.v1"


class SynthesizeSpec(DataStepSpec, SynthesizeParams):
    schema_id = "halo.spec.data-synthesize.v1"


# ---- recipes ----------------------------------------------------------------------------------------------
class DedupStep(DedupParams):
    op: Literal["dedup"] = Field(description="Step kind.")


class DecontaminateStep(DecontaminateParams):
    op: Literal["decontaminate"] = Field(description="Step kind.")


class ScoreStep(ScoreParams):
    op: Literal["score"] = Field(description="Step kind.")


class FilterStep(FilterParams):
    op: Literal["filter"] = Field(description="Step kind.")


class SynthesizeStep(SynthesizeParams):
    op: Literal["synthesize"] = Field(description="Step kind.")


RecipeStep = Annotated[DedupStep | DecontaminateStep | ScoreStep | FilterStep | SynthesizeStep, Field(discriminator="op")]


class RecipeSpec(JobSpecBase):
    """Steps run in order, each reading the previous one's output. YAML::

        input: seeds.jsonl
        output: data/train.jsonl
        steps:
          - {op: dedup, method: fuzzy, threshold: 0.85}
          - {op: decontaminate, benchmarks: [humaneval]}
          - {op: score}
          - {op: filter, column: scores.composite, top_percent: 80}
    """

    schema_id = "halo.spec.data-recipe.v1"

    input: str = Field(min_length=1, description="Input of the first step (file or dataset:<id>).")
    output: str | None = Field(default=None, description="Final output file. Default: <run dir>/final.jsonl.")
    text_key: str | None = Field(default=None, description="Text field for every step (default: by format).")
    steps: list[RecipeStep] = Field(min_length=1, description="The steps, in order.")
    register_dataset: bool = Field(default=True, description="Register every step's output as a dataset (parents chained).")
    dataset_name: str | None = Field(default=None, max_length=200, description="Name of the final dataset.")


# ---- inspect (RPC) -------------------------------------------------------------------------------------------
class InspectRequest(UserInput):
    schema_id = "halo.rpc.data-inspect-request.v1"

    path: str = Field(min_length=1, description="File or dataset:<id> to inspect.")
    text_key: str | None = Field(default=None, description="Text field (default: by format).")
    samples: int = Field(default=3, ge=0, le=50, description="Records shown as samples.")
    max_rows: int | None = Field(default=None, ge=1, description="Stop after this many rows (default: all).")


class HistogramBin(Message):
    schema_id = "halo.data.histogram-bin.v1"

    lo: int = Field(description="Lower bound (inclusive).")
    hi: int = Field(description="Upper bound (exclusive).")
    count: int = Field(description="Rows in the bin.")


class InspectReport(Message):
    schema_id = "halo.rpc.data-inspect.v1"

    path: str = Field(description="The file inspected.")
    rows: int = Field(description="Records read.")
    bad_rows: int = Field(default=0, description="Records that could not be read (see problems).")
    formats: dict[str, int] = Field(default_factory=dict, description="Detected format -> rows.")
    fields: dict[str, int] = Field(default_factory=dict, description="Field name -> rows that have it.")
    chars: dict[str, float] = Field(default_factory=dict, description="Text length in characters: min, mean, p50, p90, max.")
    words: dict[str, float] = Field(default_factory=dict, description="Text length in words: min, mean, p50, p90, max.")
    histogram: list[HistogramBin] = Field(default_factory=list, description="Text length (words) histogram, log2 bins.")
    samples: list[dict[str, Any]] = Field(default_factory=list, description="The first few records.")
    problems: list[str] = Field(default_factory=list, description="Unreadable records (file:line), the first 20.")
    sha256: str = Field(default="", description="SHA-256 of the file.")
    size_bytes: int = Field(default=0, description="File size.")


# ---- datasets in the registry --------------------------------------------------------------------------
class DatasetRegisterRequest(UserInput):
    """Record a dataset file. Registering the same (path, sha256) again returns the existing dataset."""

    schema_id = "halo.rpc.dataset-register-request.v1"

    path: str = Field(min_length=1, description="Absolute path of the dataset file.")
    rows: int = Field(ge=0, description="Records in the file.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the file's bytes.")
    size_bytes: int = Field(default=0, ge=0, description="File size.")
    format: str = Field(default="jsonl", description="jsonl, json or parquet.")
    name: str | None = Field(default=None, max_length=200, description="Human-readable name.")
    recipe: dict[str, Any] = Field(default_factory=dict, description="The step (op + parameters) that made it.")
    parents: list[str] = Field(default_factory=list, description="Dataset ids this one was made from.")
    run_id: str | None = Field(default=None, description="The data job's run id.")
    stats: dict[str, Any] = Field(default_factory=dict, description="Step report (kept, dropped by reason…).")


class DatasetInfo(Message):
    schema_id = "halo.registry.dataset.v1"

    dataset_id: str = Field(description="ds-… id; reference it as dataset:<id>.")
    name: str | None = Field(default=None, description="Name.")
    path: str = Field(description="Absolute path of the file.")
    rows: int = Field(description="Records.")
    sha256: str = Field(description="SHA-256 of the file's bytes.")
    size_bytes: int = Field(default=0, description="File size.")
    format: str = Field(default="jsonl", description="jsonl, json or parquet.")
    recipe: dict[str, Any] = Field(default_factory=dict, description="The step that made it.")
    parents: list[str] = Field(default_factory=list, description="Parent dataset ids.")
    run_id: str | None = Field(default=None, description="Run that made it.")
    stats: dict[str, Any] = Field(default_factory=dict, description="Step report.")
    created_at: datetime = Field(default_factory=utcnow, description="Registration time (UTC).")


class DatasetRef(UserInput):
    schema_id = "halo.rpc.dataset-ref.v1"

    dataset_id: str = Field(min_length=1, description="ds-… id (a 'dataset:' prefix is accepted).")


class DatasetListRequest(UserInput):
    schema_id = "halo.rpc.dataset-list-request.v1"

    name: str | None = Field(default=None, description="Only datasets with this name.")
    run_id: str | None = Field(default=None, description="Only datasets made by this run.")
    limit: int = Field(default=50, ge=1, le=1000, description="Most datasets returned, newest first.")


class DatasetList(Message):
    schema_id = "halo.rpc.dataset-list.v1"

    datasets: list[DatasetInfo] = Field(default_factory=list, description="Datasets, newest first.")
