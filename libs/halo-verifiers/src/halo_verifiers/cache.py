"""Content-addressed cache of verification results.

The key is the SHA-256 of a canonical JSON of (verifier name, verifier version, validated params
with defaults, completion, context), so the same spec + completion + context gives the same result
without re-running — across requests, and within one batch (duplicates are computed once).
Results that describe an infrastructure problem (sandbox or toolchain unavailable, internal
errors) are never cached.

Usage::

    cache = ResultCache(max_entries=50_000, path=home / "cache" / "verifier-results.sqlite")
    key = cache_key(entry_name, version, params, completion, context)
    hit = cache.get(key)          # VerifyResult | None
    cache.put(key, result)
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from halo_schemas.verifiers import VerifyContext, VerifyResult
from pydantic import BaseModel

#: error types that say nothing about the completion: never cached
UNCACHEABLE_ERRORS = frozenset({"unavailable", "sandbox_unavailable", "internal", "judge_request_failed",
                                "reward_model_load_failed"})


def cache_key(verifier: str, version: str, params: BaseModel | dict[str, Any], completion: str,
              context: VerifyContext) -> str:
    """SHA-256 hex of the canonical JSON of everything that determines a result."""
    p = params.model_dump(mode="json") if isinstance(params, BaseModel) else params
    doc = {
        "verifier": verifier,
        "version": version,
        "params": p,
        "completion": completion,
        "context": context.model_dump(mode="json", exclude_defaults=True),
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def cacheable_result(result: VerifyResult) -> bool:
    return result.error_type not in UNCACHEABLE_ERRORS


class ResultCache:
    """Thread-safe LRU in memory, optionally backed by SQLite (``path``) so it survives restarts."""

    def __init__(self, max_entries: int = 50_000, path: Path | None = None) -> None:
        self.max_entries = max_entries
        self._mem: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self._db: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("pragma journal_mode=wal")
            self._db.execute("create table if not exists results (key text primary key, result text not null)")

    def __len__(self) -> int:
        with self._lock:
            return len(self._mem)

    def get(self, key: str) -> VerifyResult | None:
        with self._lock:
            raw = self._mem.get(key)
            if raw is not None:
                self._mem.move_to_end(key)
            elif self._db is not None:
                row = self._db.execute("select result from results where key = ?", (key,)).fetchone()
                if row:
                    raw = row[0]
                    self._remember(key, raw)
            if raw is None:
                self.misses += 1
                return None
            self.hits += 1
        return VerifyResult.model_validate_json(raw)

    def put(self, key: str, result: VerifyResult) -> None:
        if not cacheable_result(result):
            return
        raw = result.model_copy(update={"cached": False, "id": None}).model_dump_json()
        with self._lock:
            self._remember(key, raw)
            if self._db is not None:
                self._db.execute("insert or replace into results (key, result) values (?, ?)", (key, raw))

    def _remember(self, key: str, raw: str) -> None:
        self._mem[key] = raw
        self._mem.move_to_end(key)
        while len(self._mem) > self.max_entries:
            self._mem.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._mem.clear()
            if self._db is not None:
                self._db.execute("delete from results")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
