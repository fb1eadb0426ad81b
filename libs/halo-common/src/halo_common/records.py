"""Record files (JSONL / JSON) read with their file positions, field-name mapping and format detection.

One implementation for every place that looks at training data: the gateway's cheap preflight before a job
is queued (``limit=`` reads only the first records) and trainer-torch, which reads and validates all of them::

    rows, problems = read_json_records(Path("/data/chat.jsonl"), limit=64)   # [(record, "chat.jsonl:3")]
    record = apply_columns(row, {"prompt": "question", "completion": "answer"})
    fmt = detect_format(record)            # "messages", "alpaca", "sharegpt", ... or None
    canonical, problems = normalize_record(record, fmt, "chat.jsonl:3")       # alpaca/sharegpt -> canonical

The data pipeline streams instead (files larger than memory): :func:`iter_records` yields ``(record, source)``
from JSONL, JSON, Parquet or text one at a time, :class:`RecordWriter` writes JSONL/JSON/Parquet row by row (renamed
into place when complete), :func:`record_text` picks the text a step looks at (a key, or by format)::

    for record, src in iter_records(Path("big.parquet")):
        text = record_text(record, None, src)

A malformed line is reported at its place in the *file* (``data.jsonl:7:12: invalid JSON: Expecting ','
delimiter``), never at the decoder's position inside one line. A record whose format cannot be told is
reported once, with the fields it has (:func:`format_problem`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from halo_common.files import sha256_file

#: Formats a record can be written in; ``alpaca`` and ``sharegpt`` are trained as their canonical format.
FORMATS = ("text", "prompt_completion", "messages", "preference", "alpaca", "sharegpt")
CANONICAL_OF = {"alpaca": "prompt_completion", "sharegpt": "messages"}
#: ShareGPT ``from`` values -> chat roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "tool": "tool"}


def json_problem(name: str, exc: json.JSONDecodeError, *, line: int | None = None) -> str:
    """``name:LINE:COL: invalid JSON: what``. ``line`` is the file line a one-line document (a JSONL
    record) started on; the decoder's own line is then relative to it."""
    lineno = exc.lineno if line is None else line + exc.lineno - 1
    return f"{name}:{lineno}:{exc.colno}: invalid JSON: {exc.msg}"


def load_json_text(text: str, name: str) -> Any:
    """``json.loads`` whose error names the file, line and column: raises ``ValueError(json_problem(...))``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(json_problem(name, exc)) from None


def read_json_records(path: Path, *, limit: int | None = None) -> tuple[list[tuple[dict[str, Any], str]], list[str]]:
    """Records of a ``.json`` (an array of objects) or JSON Lines file, each with its source (``f.jsonl:3``,
    ``f.json[2]``), and the problems (undecodable lines, non-object records; each names file:line).

    ``limit`` stops after that many records (a preflight). Raises ``FileNotFoundError`` /
    ``IsADirectoryError`` for a missing file or a directory, and ``ValueError`` naming file:line:column for
    a ``.json`` file that does not decode."""
    name = path.name
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; give a .jsonl, .json or .parquet file")
    records: list[tuple[dict[str, Any], str]] = []
    problems: list[str] = []
    if path.suffix.lower() == ".json":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{name}: not valid UTF-8 (byte {exc.start})") from None
        data = load_json_text(text, name)
        if not isinstance(data, list):
            raise ValueError(f"{name}: a .json dataset must be an array of records (use .jsonl for one record per line)")
        for i, row in enumerate(data[:limit] if limit is not None else data):
            if isinstance(row, dict):
                records.append((row, f"{name}[{i}]"))
            else:
                problems.append(f"{name}[{i}]: record must be a JSON object, got {type(row).__name__}")
        return records, problems
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if limit is not None and len(records) + len(problems) >= limit:
                break
            if not raw.strip():
                continue
            src = f"{name}:{lineno}"
            try:
                row = json.loads(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError:
                problems.append(f"{src}: not valid UTF-8")
                continue
            except json.JSONDecodeError as exc:
                problems.append(json_problem(name, exc, line=lineno))
                continue
            if not isinstance(row, dict):
                problems.append(f"{src}: record must be a JSON object, got {type(row).__name__}")
                continue
            records.append((row, src))
    return records, problems


def apply_columns(record: dict[str, Any], columns: dict[str, str], text_field: str = "text") -> dict[str, Any]:
    """``record`` with each mapped field renamed to its canonical name (``columns`` = canonical -> source;
    ``text`` goes to ``text_field``). Fields not mapped are kept; the input is not changed."""
    if not columns:
        return record
    out = dict(record)
    for canonical, source in columns.items():
        if source in out:
            target = text_field if canonical == "text" else canonical
            value = out.pop(source)
            out[target] = value
    return out


def detect_format(record: dict[str, Any], text_field: str = "text") -> str | None:
    """The format a record looks like, or None."""
    if "chosen" in record and "rejected" in record:
        return "preference"
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if text_field in record:
        return "text"
    return None


def format_hint(fmt: str, text_field: str = "text") -> str:
    """One format and its fields, for messages."""
    return {
        "text": f"text {{'{text_field}'}}",
        "prompt_completion": "prompt_completion {'prompt', 'completion'}",
        "messages": "messages {'messages'}",
        "preference": "preference {'chosen', 'rejected'[, 'prompt']}",
        "alpaca": "alpaca {'instruction'[, 'input'], 'output'}",
        "sharegpt": "sharegpt {'conversations': [{'from', 'value'}]}",
    }[fmt]


def format_problem(location: str, source: str, record: dict[str, Any], allowed: tuple[str, ...],
                   text_field: str = "text") -> str:
    """The single message for data whose format cannot be told: the fields found (once) and what would do."""
    keys = ", ".join(sorted(record)) or "(none)"
    return (f"{location}: cannot tell the record format from the fields [{keys}] (first record, {source}); "
            f"expected one of " + "; ".join(format_hint(f, text_field) for f in allowed)
            + "; or map your field names with data.columns, e.g. {\"prompt\": \"<your prompt field>\", "
            "\"completion\": \"<your answer field>\"}")


def normalize_record(record: dict[str, Any], fmt: str, source: str) -> tuple[dict[str, Any] | None, list[str]]:
    """``(record in its canonical format, problems)``: alpaca becomes prompt_completion, sharegpt becomes
    messages; other formats are returned unchanged. Fields the conversion does not use (``context``,
    ``complexity``...) are kept. A record that cannot be converted gives ``None`` and problems naming fields."""
    if fmt == "alpaca":
        problems = []
        for fld, required in (("instruction", True), ("input", False), ("output", True), ("system", False)):
            if fld not in record or record[fld] is None:
                if required:
                    problems.append(f"{source}: field '{fld}': missing")
                continue
            if not isinstance(record[fld], str):
                problems.append(f"{source}: field '{fld}': must be a string, got {type(record[fld]).__name__}")
        if problems:
            return None, problems
        parts = [record.get("system") or "", record["instruction"], record.get("input") or ""]
        rest = {k: v for k, v in record.items() if k not in ("instruction", "input", "output", "system")}
        return {**rest, "prompt": "\n\n".join(p for p in parts if p.strip()), "completion": record["output"]}, []
    if fmt == "sharegpt":
        turns = record.get("conversations")
        if not isinstance(turns, list) or not turns:
            return None, [f"{source}: field 'conversations': must be a non-empty list of {{from, value}} turns"]
        problems, messages = [], []
        for i, t in enumerate(turns):
            where = f"conversations[{i}]"
            if not isinstance(t, dict):
                problems.append(f"{source}: field '{where}': must be an object with 'from' and 'value'")
                continue
            role = SHAREGPT_ROLES.get(t.get("from"))  # type: ignore[arg-type]
            if role is None:
                problems.append(f"{source}: field '{where}.from': unknown speaker {t.get('from')!r} "
                                "(expected human, gpt or system)")
            if not isinstance(t.get("value"), str):
                problems.append(f"{source}: field '{where}.value': must be a string")
            if role is not None and isinstance(t.get("value"), str):
                messages.append({"role": role, "content": t["value"]})
        if problems:
            return None, problems
        rest = {k: v for k, v in record.items() if k != "conversations"}
        return {**rest, "messages": messages}, []
    return record, []


def required_fields(fmt: str, text_field: str = "text") -> tuple[str, ...]:
    """Fields every record of ``fmt`` must have (used to report a wrong explicit format once)."""
    return {"text": (text_field,), "prompt_completion": ("prompt", "completion"), "messages": ("messages",),
            "preference": ("chosen", "rejected"), "alpaca": ("instruction", "output"),
            "sharegpt": ("conversations",)}[fmt]


# ---- streaming (the data pipeline: files larger than memory) ------------------------------------------
#: File suffixes :func:`iter_records` reads. ``.txt``: one record ``{"text": line}`` per non-empty line.
STREAM_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")


class RecordError(ValueError):
    """A record that cannot be read; the message names ``file:line`` (or ``file row N`` for Parquet)."""


def iter_records(path: Path, *, skip_bad: bool = False, problems: list[str] | None = None,
                 batch_rows: int = 1024) -> Iterator[tuple[dict[str, Any], str]]:
    """Stream ``(record, source)`` from a JSONL, JSON (array), Parquet or plain-text file in constant memory
    (a ``.json`` array is the exception: it is parsed whole). ``source`` is ``f.jsonl:3``, ``f.json[2]``,
    ``f.parquet row 3`` or ``f.txt:3``.

    A malformed record raises :class:`RecordError` naming its place, unless ``skip_bad``: then it is skipped
    and its message appended to ``problems``. Missing files and directories raise as in
    :func:`read_json_records`::

        for record, src in iter_records(Path("big.jsonl")):
            ...
    """
    path = Path(path)
    name = path.name
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; give a .jsonl, .json, .parquet or .txt file")

    def bad(message: str) -> None:
        if not skip_bad:
            raise RecordError(message)
        if problems is not None:
            problems.append(message)

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # optional: only Parquet files need it

        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            for rec in batch.to_pylist():
                row += 1
                yield rec, f"{name} row {row}"
        return
    if suffix == ".json":
        records, found = read_json_records(path)
        for message in found:
            bad(message)
        yield from records
        return
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            src = f"{name}:{lineno}"
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                bad(f"{src}: not valid UTF-8 (byte {exc.start})")
                continue
            if suffix == ".txt":
                yield {"text": line}, src
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                bad(json_problem(name, exc, line=lineno))
                continue
            if not isinstance(rec, dict):
                bad(f"{src}: record must be a JSON object, got {type(rec).__name__}")
                continue
            yield rec, src


class RecordWriter:
    """Write records to ``.jsonl``, ``.json`` or ``.parquet`` one at a time, in constant memory (``.json``
    streams an array; Parquet is written in row groups of ``batch_rows``). The file is written under a
    temporary name and renamed on :meth:`close`, so a reader never sees half a dataset::

        with RecordWriter(Path("out.parquet")) as w:
            w.write({"prompt": "...", "completion": "..."})
        w.rows, w.sha256  # rows written, SHA-256 of the finished file
    """

    def __init__(self, path: Path, *, batch_rows: int = 4096, append: bool = False) -> None:
        self.path = Path(path)
        self.suffix = self.path.suffix.lower()
        if self.suffix not in (".jsonl", ".json", ".parquet"):
            raise ValueError(f"{self.path}: output must end in .jsonl, .json or .parquet")
        if append and self.suffix != ".jsonl":
            raise ValueError(f"{self.path}: only .jsonl outputs can be appended to (resume)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.append = append
        self.tmp = self.path if append else self.path.with_name(f".{self.path.name}.partial")
        self.rows = 0
        self.sha256 = ""
        self.batch_rows = batch_rows
        self._batch: list[dict[str, Any]] = []
        self._pq: Any = None
        self._f: Any = None
        if self.suffix != ".parquet":
            self._f = self.tmp.open("ab" if append else "wb")
            if self.suffix == ".json":
                self._f.write(b"[")

    def write(self, record: dict[str, Any]) -> None:
        if self.suffix == ".parquet":
            self._batch.append(record)
            if len(self._batch) >= self.batch_rows:
                self._flush_parquet()
        elif self.suffix == ".json":
            self._f.write((b",\n" if self.rows else b"\n") + json.dumps(record, ensure_ascii=False).encode())
        else:
            self._f.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        self.rows += 1

    def write_raw_line(self, line: bytes) -> None:
        """Copy one JSONL line as it was read (a JSONL-to-JSONL step keeps the input's bytes)."""
        if self.suffix != ".jsonl":
            self.write(json.loads(line))
            return
        self._f.write(line if line.endswith(b"\n") else line + b"\n")
        self.rows += 1

    def flush(self, fsync: bool = False) -> None:
        """Push written rows to the OS (``fsync``: to the disk; a resumable step does this before it records
        progress)."""
        if self._f is not None:
            self._f.flush()
            if fsync:
                os.fsync(self._f.fileno())

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._batch:
            return
        table = pa.Table.from_pylist(self._batch)
        if self._pq is None:
            self._pq = pq.ParquetWriter(self.tmp, table.schema)
        else:
            table = table.cast(self._pq.schema) if table.schema != self._pq.schema else table
        self._pq.write_table(table)
        self._batch = []

    def close(self) -> None:
        """Finish the file (rename into place) and compute its SHA-256."""
        if self.suffix == ".parquet":
            self._flush_parquet()
            if self._pq is None:  # no rows: an empty file with no columns is still a valid Parquet file
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.table({}), self.tmp)
            else:
                self._pq.close()
        else:
            if self.suffix == ".json":
                self._f.write(b"\n]\n")
            self._f.close()
        if self.tmp != self.path:
            self.tmp.replace(self.path)
        self.sha256 = sha256_file(self.path)

    def abort(self) -> None:
        """Drop a half-written output."""
        with contextlib.suppress(Exception):
            if self._f is not None:
                self._f.close()
            if self._pq is not None:
                self._pq.close()
        if self.tmp != self.path:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


#: Fields tried, in order, for a record's text when no key is given.
TEXT_KEYS = ("text", "content", "prompt", "question", "instruction", "input", "query")


def flatten_messages(messages: Any) -> str:
    """One text of a chat (OpenAI ``messages`` or ShareGPT ``conversations``): the turns' contents joined by
    newlines (roles left out, so the same chat in either shape flattens the same)."""
    parts: list[str] = []
    for turn in messages if isinstance(messages, list) else []:
        if isinstance(turn, dict):
            value = turn.get("content", turn.get("value"))
            if isinstance(value, str):
                parts.append(value)
            elif isinstance(value, list):  # OpenAI content parts
                parts.extend(p.get("text", "") for p in value if isinstance(p, dict))
    return "\n".join(parts)


def record_text(record: dict[str, Any], key: str | None, source: str) -> str:
    """The text a data step looks at. ``key`` names a field (a string, or a message list that is flattened);
    without a key the record's format decides (text, prompt + completion, messages, conversations, alpaca,
    preference prompt + chosen). Raises :class:`RecordError` naming the source and, for an unknown key, the
    keys the record has."""
    if key:
        if key not in record:
            raise RecordError(f"{source}: no field {key!r}; the record has [{', '.join(sorted(record)) or '(none)'}]")
        value = record[key]
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return flatten_messages(value)
        raise RecordError(f"{source}: field {key!r} must be a string or a message list, got {type(value).__name__}")
    fmt = detect_format(record)
    if fmt == "messages":
        return flatten_messages(record["messages"])
    if fmt == "sharegpt":
        return flatten_messages(record["conversations"])
    if fmt == "prompt_completion":
        return f"{record['prompt']}\n{record['completion']}"
    if fmt == "alpaca":
        return "\n".join(str(record.get(k) or "") for k in ("instruction", "input", "output") if record.get(k))
    if fmt == "preference":
        chosen = record["chosen"]
        chosen = flatten_messages(chosen) if isinstance(chosen, list) else str(chosen)
        return f"{record.get('prompt') or ''}\n{chosen}".lstrip("\n")
    for k in TEXT_KEYS:
        if isinstance(record.get(k), str):
            return record[k]
    raise RecordError(f"{source}: cannot tell which field holds the text; the record has "
                      f"[{', '.join(sorted(record)) or '(none)'}]: name one with the text key")
