"""What a job spec arriving over the API (or the bus) may ask of this host: the operator decides, not the request.

The gateway calls these before it queues a job and every worker calls :func:`check_spec_policy` again when
the job arrives (defence in depth: a job put on the bus by something other than the gateway meets the same
rules). The spec's own methods say which of its fields load models, read data or run code
(``TrainSpecBase.model_refs()`` / ``data_refs()`` / ``code_requests()`` in :mod:`halo_schemas.training`)::

    check_spec_policy(code_requests=spec.code_requests(), model_refs=spec.model_refs(),
                      data_refs=spec.data_refs(), allow_remote_code=settings.allow_remote_code,
                      paths=settings.paths, roots=[settings.home, *settings.data_roots] if exposed else None)
    preflight_refs(spec.model_refs(), spec.data_refs(), columns=spec.data.columns)   # gateway: before queueing

Rules:

* **Code execution** (``trust_remote_code``, a ``module:function`` judge...) is refused with
  :class:`~halo_common.errors.Forbidden` unless the host sets ``HALO_ALLOW_REMOTE_CODE=1``; and
  ``trust_remote_code`` is refused for a model inside an imported bundle whatever the setting says.
* **Relative paths** are refused: a server must never resolve them against its own working directory (the
  CLI sends absolute paths). Hub ids (``org/name``) and ``tiny://`` / ``demo://`` are not paths.
* **Confinement**: with ``roots`` (an exposed gateway) a local path must resolve (symlinks followed) inside
  one of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from halo_common.errors import BadRequest, Forbidden, NotFound, Unprocessable
from halo_common.paths import HaloPaths, is_imported
from halo_common.records import (
    apply_columns,
    detect_format,
    format_problem,
    read_json_records,
)

REMOTE_CODE_SETTING = "HALO_ALLOW_REMOTE_CODE"
#: Locations that name something built in rather than a file.
SCHEMES = ("tiny://", "demo://")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
#: A Hugging Face Hub repo id: ``name`` or ``owner/name``.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
PREFLIGHT_RECORDS = 64


def is_hub_id(value: str) -> bool:
    """True for ``name`` / ``owner/name`` that is not written like a file (no data suffix, no ``..``)."""
    return bool(_HUB_ID.match(value)) and ".." not in value and not value.lower().endswith(DATA_SUFFIXES)


def is_local_path(value: str) -> bool:
    """True when ``value`` names a local file or directory rather than a Hub id or a built-in scheme."""
    if value.startswith(SCHEMES):
        return False
    return not is_hub_id(value)


def check_spec_policy(*, code_requests: Sequence[str], model_refs: Iterable[tuple[str, str]],
                      data_refs: Iterable[tuple[str, str]], allow_remote_code: bool, paths: HaloPaths,
                      roots: Sequence[Path] | None = None) -> None:
    """Raise :class:`BadRequest` (relative path) or :class:`Forbidden` (code execution not allowed here, a
    model in an imported bundle with ``trust_remote_code``, a path outside ``roots``), naming the field."""
    models, data = list(model_refs), list(data_refs)
    for param, value in models + data:
        if is_local_path(value) and not os.path.isabs(value):
            raise BadRequest(
                f"{param}: {value!r} is a relative path; send an absolute one (the halo-forge CLI resolves paths "
                "against your working directory; a server never guesses its own)", param=param)
    if "trust_remote_code" in code_requests:
        for param, value in models:
            if is_local_path(value) and is_imported(Path(value), paths):
                raise Forbidden(
                    f"trust_remote_code is refused for {param} {value}: it lies in an imported bundle, whose code is "
                    f"never run (whatever {REMOTE_CODE_SETTING} says)", param="trust_remote_code")
    if code_requests and not allow_remote_code:
        field = code_requests[0]
        raise Forbidden(
            f"{field} is refused: this host does not run code shipped with a model or named in a spec; the operator "
            f"can allow it with {REMOTE_CODE_SETTING}=1", param=field)
    if roots is not None:
        allowed = [Path(os.path.realpath(r)) for r in roots]
        for param, value in models + data:
            if not is_local_path(value):
                continue
            real = Path(os.path.realpath(value))
            if not any(real == r or real.is_relative_to(r) for r in allowed):
                raise Forbidden(
                    f"{param}: {value} is outside the directories this gateway may read (HALO_HOME and "
                    "HALO_GATEWAY_DATA_ROOTS)", param=param)


def preflight_refs(model_refs: Iterable[tuple[str, str]], data_refs: Iterable[tuple[str, str]], *,
                   columns: dict[str, str] | None = None, text_field: str = "text", data_format: str = "auto") -> None:
    """Cheap checks before a job is queued, so a typo never becomes a failed run: a local model exists (a
    directory), a local data file exists and its first records parse and have a recognisable format.
    Raises :class:`NotFound` (``model not found: PATH``) or :class:`Unprocessable` naming file:line."""
    for param, value in model_refs:
        if not is_local_path(value):
            continue
        if not os.path.exists(value):
            raise NotFound(f"model not found: {value}", param=param)
        if not os.path.isdir(value):
            raise Unprocessable(f"{param}: {value} is a file; a local model is a directory in Hugging Face format",
                                param=param)
    for param, value in data_refs:
        if not is_local_path(value):
            continue
        path = Path(value)
        if not path.exists():
            raise NotFound(f"data not found: {value}", param=param)
        if param not in ("data.train", "data.eval"):
            continue  # e.g. a RAFT run directory with historical stats: existence is what can be told here
        if path.is_dir():
            raise Unprocessable(f"{param}: {value} is a directory; give a .jsonl, .json or .parquet file", param=param)
        if path.suffix.lower() == ".parquet":
            continue  # read by the trainer (pyarrow); the gateway does not depend on it
        try:
            rows, problems = read_json_records(path, limit=PREFLIGHT_RECORDS)
        except (OSError, ValueError) as exc:
            raise Unprocessable(f"{param}: {exc}", param=param) from None
        if problems:
            raise Unprocessable(f"{param}: " + "; ".join(problems[:5]), param=param)
        if not rows:
            raise Unprocessable(f"{param}: {value} has no records", param=param)
        if data_format != "auto":
            continue
        record, source = rows[0]
        mapped = apply_columns(record, columns or {}, text_field)
        if detect_format(mapped, text_field) is None:
            raise Unprocessable(format_problem(value, source, mapped, (
                "text", "prompt_completion", "messages", "preference", "alpaca", "sharegpt"), text_field),
                param="data.format")
