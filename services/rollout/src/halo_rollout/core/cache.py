"""An LRU of loaded policies keyed by (backend, model, adapter), never serving stale weights.

A trainer that rewrites an adapter (or model) directory in place and then asks for rollouts must
get the new weights. So every :meth:`ModelCache.get` compares the directories' fingerprints
(names, sizes and mtimes of the weight files) with those seen at load time; when they changed it
calls the backend's ``update_weights(<dir>)`` before returning, which bumps ``weights_version``.
``reload=True`` forces that re-read even when the files look unchanged.

Usage::

    cache = ModelCache(capacity=2, factory=lambda name: make_backend(name))
    entry, action = cache.get("transformers", "/models/tiny", "/runs/r1/adapter")
    entry.backend.generate(requests)
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from halo_sampling.backends.base import RolloutBackend, dir_fingerprint

Key = tuple[str, str, str | None]


@dataclass
class Entry:
    """One cached policy and the fingerprints of the directories it was read from."""

    key: Key
    backend: RolloutBackend
    model_fp: str
    adapter_fp: str
    load_s: float = 0.0

    @property
    def label(self) -> str:
        name, model, adapter = self.key
        return f"{name}:{model}" + (f"+{adapter}" if adapter else "")


class ModelCache:
    """Thread-safe LRU of loaded backends. ``factory(backend_name)`` builds an unloaded backend."""

    def __init__(self, capacity: int, factory: Callable[[str], RolloutBackend]) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.factory = factory
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._lock = threading.RLock()
        self.on_update: Callable[[Entry], None] | None = None

    def get(self, backend: str, model: str, adapter: str | None = None, *, reload: bool = False) -> tuple[Entry, str]:
        """The loaded entry and what happened: ``loaded``, ``cached`` or ``updated`` (new weights read)."""
        key: Key = (backend, model, adapter)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                start = time.perf_counter()
                be = self.factory(backend)
                be.load(model, adapter)
                entry = Entry(key, be, dir_fingerprint(model), dir_fingerprint(adapter), time.perf_counter() - start)
                self._entries[key] = entry
                self._evict()
                return entry, "loaded"
            self._entries.move_to_end(key)
            model_fp, adapter_fp = dir_fingerprint(model), dir_fingerprint(adapter)
            changed_model = model_fp != entry.model_fp
            changed_adapter = adapter is not None and adapter_fp != entry.adapter_fp
            if not (reload or changed_model or changed_adapter):
                return entry, "cached"
            start = time.perf_counter()
            if reload or changed_model:
                if model_fp.startswith("hub:"):
                    # A Hub id has no directory to re-read in place: load it afresh.
                    be = self.factory(backend)
                    be.load(model, adapter)
                    entry.backend.close()
                    entry.backend = be
                else:
                    entry.backend.update_weights(model)
            if adapter is not None and (reload or changed_adapter or changed_model):
                # A base update may have overwritten adapted layers (MLX merges); re-apply the adapter.
                entry.backend.update_weights(adapter)
            entry.model_fp, entry.adapter_fp = model_fp, adapter_fp
            entry.load_s = time.perf_counter() - start
            if self.on_update is not None:
                self.on_update(entry)
            return entry, "updated"

    def labels(self) -> list[str]:
        """Cached entries, least recently used first."""
        with self._lock:
            return [e.label for e in self._entries.values()]

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self) -> None:
        while len(self._entries) > self.capacity:
            _, old = self._entries.popitem(last=False)
            old.backend.close()

    def close(self) -> None:
        with self._lock:
            for e in self._entries.values():
                e.backend.close()
            self._entries.clear()
