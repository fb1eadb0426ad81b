"""Loading and validating training records.

Records come from a local JSONL / JSON / Parquet file or a Hugging Face Hub dataset. Every record keeps
its origin (``data.jsonl:7``, ``prefs.parquet row 3``, ``org/ds[train] row 12``) so that validation,
which runs before any model is loaded, can name the file, line and field of each bad record::

    data = load_training_data(spec.data, method="sft")   # raises DataError listing every problem
    data.train[0].record, data.train[0].source, data.format

Formats (``DataSpec.format``):

* ``text``              ``{"text": "..."}``  (field name from ``text_field``)
* ``prompt_completion`` ``{"prompt": "...", "completion": "..."}`` or both as message lists
* ``messages``          ``{"messages": [{"role": "user", "content": "..."}, ...]}``
* ``preference``        ``{"chosen": ..., "rejected": ...}`` with an explicit ``prompt`` or an implicit one
  (the shared leading part of chosen and rejected), as strings or message lists.
* ``alpaca``            ``{"instruction": ..., "input": ..., "output": ...}`` -> trained as prompt_completion
* ``sharegpt``          ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}`` -> messages

``DataSpec.columns`` renames fields first (``{"prompt": "question"}``). Reading, renaming, detection and the
alpaca/sharegpt conversion live in :mod:`halo_common.records`, shared with the gateway's preflight.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halo_common.errors import Unprocessable
from halo_common.records import (
    CANONICAL_OF,
    apply_columns,
    detect_format,
    format_hint,
    format_problem,
    normalize_record,
    read_json_records,
    required_fields,
)
from halo_schemas.training import DataSpec

ROLES = ("system", "user", "assistant", "tool")
SFT_FORMATS = ("text", "prompt_completion", "messages", "alpaca", "sharegpt")
PREFERENCE_FORMATS = ("preference",)
METHOD_FORMATS: dict[str, tuple[str, ...]] = {
    "sft": SFT_FORMATS,
    "dpo": PREFERENCE_FORMATS,
    "orpo": PREFERENCE_FORMATS,
    "rm": PREFERENCE_FORMATS,
}
MAX_LISTED_PROBLEMS = 20
#: Packages whose ``data/`` folder holds the ``demo://`` datasets (the bundled demo data ships with them).
DEMO_PACKAGES = ("halo_trainer_torch", "halo_trainer_mlx")


class DataError(Unprocessable):
    """The data cannot be trained on. ``problems`` lists each one as ``source: field 'x': what``."""

    def __init__(self, problems: list[str], *, param: str = "data") -> None:
        self.problems = problems
        shown = problems[:MAX_LISTED_PROBLEMS]
        more = f" (and {len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
        head = "invalid training data" if len(problems) != 1 else "invalid training record"
        super().__init__(f"{head}: " + "; ".join(shown) + more, param=param)


@dataclass
class SourcedRecord:
    """One record and where it came from (``file:line`` or ``file row N``)."""

    record: dict[str, Any]
    source: str


@dataclass
class DatasetFile:
    """Identity of a dataset for replay.json: what it is, its content hash and size."""

    location: str
    sha256: str
    size_bytes: int
    records: int
    kind: str  # "file" | "hub"

    def to_dict(self) -> dict[str, Any]:
        return {"location": self.location, "sha256": self.sha256, "size_bytes": self.size_bytes,
                "records": self.records, "kind": self.kind}


@dataclass
class TrainingData:
    """Validated records of one job, split into train and eval."""

    format: str  # canonical format the recipes see (alpaca -> prompt_completion, sharegpt -> messages)
    train: list[SourcedRecord]
    eval: list[SourcedRecord] = field(default_factory=list)
    files: list[DatasetFile] = field(default_factory=list)
    source_format: str | None = None  # the format as written, when it differs from ``format``

    @property
    def format_label(self) -> str:
        """``alpaca (as prompt_completion)`` or just ``messages``."""
        return f"{self.source_format} (as {self.format})" if self.source_format else self.format


# ---- reading -------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_local(location: str) -> bool:
    return os.path.exists(location) or location.endswith((".jsonl", ".json", ".parquet")) or location.startswith(
        (".", "/", "~")
    )


def read_records(location: str, split: str = "train") -> tuple[list[SourcedRecord], DatasetFile, list[str]]:
    """Read every record of ``location``; return (records, identity, problems).

    Undecodable lines become problems (``data.jsonl:3: invalid JSON: ...``) instead of exceptions, so
    one run reports all of them. A missing file raises :class:`DataError` at once.
    """
    if location.startswith("demo://"):
        return _read_local(demo_path(location))
    if _is_local(location):
        return _read_local(Path(location).expanduser())
    return _read_hub(location, split)


def demo_path(location: str) -> Path:
    """``demo://<file>``: a dataset bundled with a trainer package (``data/`` of the first of
    :data:`DEMO_PACKAGES` installed here that has it; used by ``halo-forge demo``)."""
    from importlib import resources
    from importlib.util import find_spec

    name = location.removeprefix("demo://")
    if "/" in name or name.startswith("."):
        raise DataError([f"{location}: bundled dataset names are plain file names"])
    candidates = [Path(str(resources.files(pkg) / "data" / name)) for pkg in DEMO_PACKAGES if find_spec(pkg)]
    found = [c for c in candidates if c.is_file()]
    if not found:
        raise DataError([f"{location}: no installed trainer ships {name!r} (looked in {', '.join(DEMO_PACKAGES)})"])
    return found[0]


def _read_local(path: Path) -> tuple[list[SourcedRecord], DatasetFile, list[str]]:
    name = path.name
    path = Path(os.path.abspath(path))  # errors name the file as resolved, not as typed
    if not path.exists():
        raise DataError([f"{path}: file not found"])
    if path.is_dir():
        raise DataError([f"{path}: is a directory; give a .jsonl, .json or .parquet file"])
    records: list[SourcedRecord] = []
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DataError([f"{name}: not a readable Parquet file ({exc})"]) from None
        for i, row in enumerate(table.to_pylist(), start=1):
            records.append(SourcedRecord(row, f"{name} row {i}"))
        problems: list[str] = []
    else:
        try:
            rows, problems = read_json_records(path)
        except ValueError as exc:  # a .json file that does not decode: file:line:column in the message
            raise DataError([str(exc)]) from None
        records = [SourcedRecord(row, src) for row, src in rows]
    ident = DatasetFile(str(path), _sha256_file(path), path.stat().st_size, len(records), "file")
    return records, ident, problems


def _read_hub(dataset_id: str, split: str) -> tuple[list[SourcedRecord], DatasetFile, list[str]]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataError([f"{dataset_id}: the 'datasets' package is needed for Hub datasets"]) from None
    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:
        raise DataError([f"{dataset_id}: cannot load Hub dataset split '{split}' ({type(exc).__name__}: {exc})"]) from None
    records = [SourcedRecord(dict(row), f"{dataset_id}[{split}] row {i}") for i, row in enumerate(ds, start=1)]
    h = hashlib.sha256()
    size = 0
    for cache in ds.cache_files:
        fn = Path(cache["filename"])
        if fn.exists():
            h.update(_sha256_file(fn).encode())
            size += fn.stat().st_size
    h.update(str(getattr(ds, "_fingerprint", "")).encode())
    return records, DatasetFile(f"hub:{dataset_id}[{split}]", h.hexdigest(), size, len(records), "hub"), []


# ---- format detection and validation ---------------------------------------------------------


def _check_messages(value: Any, fld: str, src: str, *, need_assistant: bool) -> list[str]:
    if not isinstance(value, list) or not value:
        return [f"{src}: field '{fld}': must be a non-empty list of {{role, content}} messages"]
    problems = []
    for i, m in enumerate(value):
        where = f"{fld}[{i}]"
        if not isinstance(m, dict):
            problems.append(f"{src}: field '{where}': must be an object with 'role' and 'content'")
            continue
        role = m.get("role")
        if role not in ROLES:
            problems.append(f"{src}: field '{where}.role': unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if "content" not in m:
            problems.append(f"{src}: field '{where}.content': missing")
        elif not isinstance(m["content"], str):
            problems.append(f"{src}: field '{where}.content': must be a string, got {type(m['content']).__name__}")
    if need_assistant and not problems and not any(m.get("role") == "assistant" for m in value):
        problems.append(f"{src}: field '{fld}': has no assistant message, so nothing would be trained")
    return problems


def _check_text(value: Any, fld: str, src: str) -> list[str]:
    if not isinstance(value, str):
        return [f"{src}: field '{fld}': must be a string, got {type(value).__name__}"]
    if not value.strip():
        return [f"{src}: field '{fld}': is empty"]
    return []


def validate_record(rec: SourcedRecord, fmt: str, *, text_field: str = "text", completion_only: bool = True) -> list[str]:
    """Problems of one record for ``fmt``; each names the source and the field."""
    r, src = rec.record, rec.source
    if fmt == "text":
        if text_field not in r:
            return [f"{src}: field '{text_field}': missing"]
        return _check_text(r[text_field], text_field, src)
    if fmt == "messages":
        if "messages" not in r:
            return [f"{src}: field 'messages': missing"]
        return _check_messages(r["messages"], "messages", src, need_assistant=completion_only)
    if fmt == "prompt_completion":
        missing = [f for f in ("prompt", "completion") if f not in r]
        if missing:
            return [f"{src}: field '{f}': missing" for f in missing]
        if isinstance(r["prompt"], list) or isinstance(r["completion"], list):
            return _check_messages(r["prompt"], "prompt", src, need_assistant=False) + _check_messages(
                r["completion"], "completion", src, need_assistant=completion_only
            )
        return _check_text(r["prompt"], "prompt", src) + _check_text(r["completion"], "completion", src)
    if fmt == "preference":
        return _validate_preference(r, src)
    return [f"{src}: unknown format {fmt!r}"]


def _validate_preference(r: dict[str, Any], src: str) -> list[str]:
    missing = [f for f in ("chosen", "rejected") if f not in r]
    if missing:
        return [f"{src}: field '{f}': missing" for f in missing]
    chosen, rejected = r["chosen"], r["rejected"]
    conversational = isinstance(chosen, list)
    if conversational != isinstance(rejected, list):
        return [f"{src}: field 'rejected': must be the same kind as 'chosen' (both strings or both message lists)"]
    problems: list[str] = []
    if conversational:
        problems += _check_messages(chosen, "chosen", src, need_assistant=False)
        problems += _check_messages(rejected, "rejected", src, need_assistant=False)
        if "prompt" in r and r["prompt"] is not None:
            problems += _check_messages(r["prompt"], "prompt", src, need_assistant=False)
    else:
        problems += _check_text(chosen, "chosen", src) + _check_text(rejected, "rejected", src)
        if "prompt" in r and r["prompt"] is not None and not isinstance(r["prompt"], str):
            problems.append(f"{src}: field 'prompt': must be a string like 'chosen', got {type(r['prompt']).__name__}")
    if problems:
        return problems
    try:
        prompt, c, rj = split_preference(r)
    except ValueError as exc:
        return [f"{src}: {exc}"]
    if c == rj:
        problems.append(f"{src}: field 'rejected': identical to 'chosen', so there is no preference to learn")
    if conversational and (not c or c[-1].get("role") != "assistant" or not rj or rj[-1].get("role") != "assistant"):
        problems.append(f"{src}: field 'chosen'/'rejected': must end with an assistant message")
    if not prompt:
        problems.append(f"{src}: field 'prompt': empty (no explicit prompt and chosen/rejected share no leading part)")
    return problems


def split_preference(r: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) with an explicit prompt; an implicit prompt is the shared leading part.

    For message lists the prompt is the longest common prefix of whole messages; for strings the longest
    common prefix, cut back to the last whitespace so a word is never split between prompt and completion.
    """
    chosen, rejected = r["chosen"], r["rejected"]
    prompt = r.get("prompt")
    if prompt is not None:
        return prompt, chosen, rejected
    if isinstance(chosen, list):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        # The completion must contain at least the final (assistant) message of each side.
        n = min(n, len(chosen) - 1, len(rejected) - 1)
        return chosen[:n], chosen[n:], rejected[n:]
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    cut = max(chosen.rfind(" ", 0, n), chosen.rfind("\n", 0, n))
    n = cut + 1 if cut >= 0 and n < len(chosen) and n < len(rejected) else n
    if n >= len(chosen) or n >= len(rejected):
        raise ValueError("field 'chosen'/'rejected': one is a prefix of the other, so no implicit prompt can be split off")
    return chosen[:n], chosen[n:], rejected[n:]


def _prepare(records: list[SourcedRecord], spec: DataSpec, fmt: str,
             completion_only: bool) -> tuple[list[SourcedRecord], list[str]]:
    """Rename mapped columns, convert alpaca/sharegpt to their canonical format, validate every record."""
    out: list[SourcedRecord] = []
    problems: list[str] = []
    canonical = CANONICAL_OF.get(fmt, fmt)
    for rec in records:
        row, found = normalize_record(apply_columns(rec.record, spec.columns, spec.text_field), fmt, rec.source)
        if row is None:
            problems += found
            continue
        rec = SourcedRecord(row, rec.source)
        problems += validate_record(rec, canonical, text_field=spec.text_field, completion_only=completion_only)
        out.append(rec)
    return out, problems


def load_training_data(spec: DataSpec, method: str, *, completion_only: bool = True, seed: int = 42) -> TrainingData:
    """Read, detect, validate and split the data of a job. Raises :class:`DataError` naming every problem.

    A format that cannot be told (or an explicit ``format`` whose fields the first record lacks) is one
    problem listing the fields found, not one per record."""
    allowed = METHOD_FORMATS[method]
    records, ident, problems = read_records(spec.train, spec.split)
    files = [ident]
    fmt = spec.format
    first = records[0] if records else None
    first_row = apply_columns(first.record, spec.columns, spec.text_field) if first else None
    if first is not None and first_row is not None:
        if fmt == "auto":
            detected = detect_format(first_row, spec.text_field)
            if detected is None:
                raise DataError(problems + [format_problem(ident.location, first.source, first_row, allowed,
                                                           spec.text_field)], param="data.format")
            fmt = detected
        elif any(f not in first_row for f in required_fields(fmt, spec.text_field)):
            raise DataError(problems + [
                f"{ident.location}: format '{fmt}' needs the fields {format_hint(fmt, spec.text_field)}, but the first "
                f"record ({first.source}) has [{', '.join(sorted(first_row)) or '(none)'}]; set data.format, or map "
                "your fields with data.columns"], param="data.format")
    elif fmt == "auto":
        fmt = allowed[0]
    if fmt not in allowed:
        raise DataError(
            [f"{ident.location}: format '{fmt}' cannot train '{method}'; it needs " + " or ".join(allowed)],
            param="data.format",
        )
    if not records and not problems:
        problems.append(f"{ident.location}: no records")
    records, found = _prepare(records, spec, fmt, completion_only)
    problems += found
    eval_records: list[SourcedRecord] = []
    if spec.eval is not None:
        eval_records, eval_ident, eval_problems = read_records(spec.eval, spec.eval_split or spec.split)
        files.append(eval_ident)
        problems += eval_problems
        eval_records, found = _prepare(eval_records, spec, fmt, completion_only)
        problems += found
    if problems:
        raise DataError(problems)
    if spec.max_samples is not None:
        records = records[: spec.max_samples]
    if spec.eval is None and spec.eval_fraction > 0:
        order = list(range(len(records)))
        random.Random(seed).shuffle(order)
        n_eval = max(1, int(round(len(records) * spec.eval_fraction)))
        if n_eval >= len(records):
            raise DataError([f"{ident.location}: eval_fraction {spec.eval_fraction} leaves no training records"],
                            param="data.eval_fraction")
        held = set(order[:n_eval])
        eval_records = [r for i, r in enumerate(records) if i in held]
        records = [r for i, r in enumerate(records) if i not in held]
    canonical = CANONICAL_OF.get(fmt, fmt)
    return TrainingData(format=canonical, train=records, eval=eval_records, files=files,
                        source_format=fmt if canonical != fmt else None)
