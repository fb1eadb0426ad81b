"""What every step shares: reading records with their text, progress, cancellation, the step result."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halo_common.records import RecordError, iter_records, record_text


class DataError(ValueError):
    """Input the step cannot use (malformed line, unknown key, empty file); the message names where."""


class Cancelled(Exception):
    """The job was cancelled (or the service is stopping) between two batches."""


@dataclass
class Progress:
    """Reported after each batch: rows read so far, rows written, rows dropped."""

    rows_in: int = 0
    rows_out: int = 0
    dropped: int = 0


ProgressFn = Callable[[Progress], None]
StopFn = Callable[[], bool]


def never() -> bool:
    return False


def ignore(_: Progress) -> None:
    return None


@dataclass
class StepResult:
    """What a step did: counts, why rows were dropped, extra files written (clusters, reports)."""

    op: str
    output: str
    rows_in: int
    rows_out: int
    dropped: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"op": self.op, "output": self.output, "rows_in": self.rows_in, "rows_out": self.rows_out,
                "dropped": dict(self.dropped), "files": dict(self.files), **self.details}


def records(path: str | Path) -> Iterator[tuple[dict[str, Any], str]]:
    """The input's records, each with its ``file:line``; a malformed one or an empty input raises
    :class:`DataError` (an empty dataset is an error, never an empty success)."""
    path = Path(path).expanduser()
    seen = False
    try:
        for rec, src in iter_records(path):
            seen = True
            yield rec, src
    except (RecordError, FileNotFoundError, IsADirectoryError) as exc:
        raise DataError(str(exc)) from None
    except ValueError as exc:  # a .json that does not decode, an unreadable Parquet file
        raise DataError(f"{path.name}: {exc}") from None
    if not seen:
        raise DataError(f"{path}: no records (an empty input is an error)")


def texts(path: str | Path, key: str | None) -> Iterator[tuple[dict[str, Any], str, str]]:
    """``(record, source, text)`` for every record; an unknown key names the keys the record has."""
    for rec, src in records(path):
        try:
            yield rec, src, record_text(rec, key, src)
        except RecordError as exc:
            raise DataError(str(exc)) from None


def get_path(record: dict[str, Any], dotted: str) -> Any:
    """``record['a']['b']`` for ``'a.b'`` (a literal top-level key with dots wins); KeyError when absent."""
    if dotted in record:
        return record[dotted]
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value
