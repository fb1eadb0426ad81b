"""Run verifiers: spec validation, availability, error isolation, the cache, and parallel batches.

Usage (library, no bus)::

    engine = VerifierEngine.create(workers=4)                  # detects the sandbox, loads built-ins
    r = engine.verify(VerifierSpec(name="gcc"), completion, VerifyContext(expected_output="3\\n"))
    rs = engine.verify_batch(spec, [VerifyItem(completion=c, context=ctx) for c in completions])

    # inside asyncio (the service):
    r = await engine.averify(spec, completion, context)
    rs = await engine.averify_batch(spec, items)

A bad spec raises (:class:`BadRequest` naming ``params.<field>``, :class:`NotFound` for an unknown
verifier) before any work starts; anything that goes wrong with one item becomes that item's result
(``error_type`` set), never an exception and never another item's problem. Batches keep item order;
identical items (same spec + completion + context) are computed once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from halo_common.paths import HaloPaths
from halo_schemas.verifiers import VerifierSpec, VerifyContext, VerifyItem, VerifyResult

from halo_verifiers.base import Runtime, Verifier, VerifierParams
from halo_verifiers.cache import ResultCache, cache_key, cacheable_result
from halo_verifiers.registry import REGISTRY, RegistryEntry, VerifierRegistry
from halo_verifiers.sandbox import Sandbox, SandboxUnavailable
from halo_verifiers.toolchains import Toolchains

log = logging.getLogger("halo_verifiers.engine")

#: observer(verifier_name, result, cached) — the service turns this into Prometheus metrics
Observer = Callable[[str, VerifyResult, bool], None]


@dataclass
class Prepared:
    """A validated spec: the registry entry, the params model and a verifier instance."""

    entry: RegistryEntry
    params: VerifierParams
    verifier: Verifier


class VerifierEngine:
    """Verifications, one at a time or ``workers`` in parallel (threads: the work is subprocesses)."""

    def __init__(
        self,
        runtime: Runtime,
        registry: VerifierRegistry = REGISTRY,
        cache: ResultCache | None = None,
        workers: int | None = None,
        observer: Observer | None = None,
    ) -> None:
        import halo_verifiers.verifiers  # noqa: F401  (registers the built-ins)

        self.runtime = runtime
        self.registry = registry
        runtime.registry = registry
        self.cache = cache
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="verify")
        self.observer = observer
        self._inflight: dict[str, Future[VerifyResult]] = {}
        self._lock = threading.Lock()
        self._owns_sandbox = False

    @classmethod
    def create(
        cls,
        *,
        workers: int | None = None,
        mechanism: str = "auto",
        allow_host: bool = False,
        cache: ResultCache | None | bool = True,
        plugins_dir: Path | None = None,
        registry: VerifierRegistry = REGISTRY,
        home: Path | None = None,
        allow_remote_code: bool = False,
        **sandbox_kwargs: Any,
    ) -> VerifierEngine:
        """An engine with a detected sandbox (None + a reason when none works: fail closed),
        a memory cache (``cache=False`` for none) and plugins loaded from ``plugins_dir``. ``home`` is the
        HALO_HOME whose runs a learned verifier (``reward_model``) loads (default ``$HALO_HOME``);
        ``allow_remote_code`` is the host's ``HALO_ALLOW_REMOTE_CODE``."""
        try:
            sandbox: Sandbox | None = Sandbox.detect(mechanism, allow_host=allow_host, **sandbox_kwargs)
            problem = None
        except SandboxUnavailable as exc:
            sandbox, problem = None, exc.message
            log.error("verifier sandbox unavailable: %s", problem)
        runtime = Runtime(sandbox=sandbox, toolchains=Toolchains(), sandbox_problem=problem,
                          paths=HaloPaths(home) if home is not None else None, allow_remote_code=allow_remote_code)
        if sandbox is not None:
            _expose_toolchains(runtime)
        rc = ResultCache() if cache is True else (cache if isinstance(cache, ResultCache) else None)
        engine = cls(runtime, registry, rc, workers)
        engine._owns_sandbox = True
        if plugins_dir is not None:
            registry.load_plugins(plugins_dir)
        return engine

    # ---- preparation ------------------------------------------------------------------------------
    def prepare(self, spec: VerifierSpec) -> Prepared:
        """Validate ``spec`` (raises BadRequest / NotFound) and build the verifier."""
        entry = self.registry.resolve(spec.name)
        params = self.registry.validate_params(spec)
        return Prepared(entry, params, entry.cls(params, self.runtime))

    def key(self, prepared: Prepared, completion: str, context: VerifyContext) -> str:
        return cache_key(prepared.entry.name, prepared.entry.cls.version, prepared.params, completion, context)

    # ---- one verification ----------------------------------------------------------------------
    def _execute(self, prepared: Prepared, completion: str, context: VerifyContext) -> VerifyResult:
        v = prepared.verifier
        start = time.monotonic()
        try:
            av = v.availability(context)
            result = v.verify(completion, context) if av.ok else v.unavailable(av)
        except SandboxUnavailable as exc:
            result = v.error_result("sandbox_unavailable", exc.message)
        except Exception as exc:  # a verifier bug must not take the batch (or the service) down
            log.exception("verifier %s failed", prepared.entry.name)
            result = v.error_result("internal", f"{type(exc).__name__}: {exc}")
        return result.model_copy(update={"duration_s": round(time.monotonic() - start, 6), "cached": False})

    def _run(self, prepared: Prepared, completion: str, context: VerifyContext, use_cache: bool,
             item_id: str | None) -> VerifyResult:
        """Cache lookup, in-flight dedup, execution, cache fill, observation."""
        name = prepared.entry.name
        use = use_cache and self.cache is not None and prepared.verifier.cacheable()
        if not use:
            result = self._execute(prepared, completion, context)
            self._observe(name, result, False)
            return result.model_copy(update={"id": item_id})
        key = self.key(prepared, completion, context)
        assert self.cache is not None
        hit = self.cache.get(key)
        if hit is not None:
            self._observe(name, hit, True)
            return hit.model_copy(update={"cached": True, "duration_s": 0.0, "id": item_id})
        with self._lock:
            running = self._inflight.get(key)
            mine = running is None
            if mine:
                running = Future()
                self._inflight[key] = running
        assert running is not None
        if not mine:
            shared = running.result()
            if cacheable_result(shared):
                self._observe(name, shared, True)
                return shared.model_copy(update={"cached": True, "duration_s": 0.0, "id": item_id})
            # An infrastructure failure is not an answer about this completion: run it ourselves.
            result = self._execute(prepared, completion, context)
            self._observe(name, result, False)
            return result.model_copy(update={"id": item_id})
        try:
            result = self._execute(prepared, completion, context)
            if cacheable_result(result):
                self.cache.put(key, result)
            running.set_result(result)
        except BaseException as exc:
            running.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)
        self._observe(name, result, False)
        return result.model_copy(update={"id": item_id})

    def _observe(self, name: str, result: VerifyResult, cached: bool) -> None:
        if self.observer is not None:
            try:
                self.observer(name, result, cached)
            except Exception:  # metrics must never break verification
                log.exception("verification observer failed")

    def verify(self, spec: VerifierSpec, completion: str, context: VerifyContext | None = None, *,
               use_cache: bool = True) -> VerifyResult:
        """Verify one completion in the calling thread."""
        return self._run(self.prepare(spec), completion, context or VerifyContext(), use_cache, None)

    def verify_batch(self, spec: VerifierSpec, items: Sequence[VerifyItem], *, use_cache: bool = True,
                     progress: Callable[[int, int], None] | None = None) -> list[VerifyResult]:
        """Verify ``items`` on the worker pool; results in item order. ``progress(done, total)``."""
        prepared = self.prepare(spec)
        futures = [self.pool.submit(self._run, prepared, it.completion, it.context, use_cache, it.id) for it in items]
        out: list[VerifyResult] = []
        for i, f in enumerate(futures):
            out.append(self._isolate(prepared, f, items[i].id))
            if progress:
                progress(i + 1, len(items))
        return out

    def _isolate(self, prepared: Prepared, fut: Future[VerifyResult], item_id: str | None) -> VerifyResult:
        try:
            return fut.result()
        except Exception as exc:
            log.exception("verification of item %s failed", item_id)
            r = prepared.verifier.error_result("internal", f"{type(exc).__name__}: {exc}")
            return r.model_copy(update={"id": item_id})

    # ---- asyncio ---------------------------------------------------------------------------------------
    async def averify(self, spec: VerifierSpec, completion: str, context: VerifyContext | None = None, *,
                      use_cache: bool = True) -> VerifyResult:
        """:meth:`verify` on the worker pool, awaitable."""
        prepared = self.prepare(spec)
        fut = self.pool.submit(self._run, prepared, completion, context or VerifyContext(), use_cache, None)
        return await asyncio.wrap_future(fut)

    async def averify_batch(self, spec: VerifierSpec, items: Sequence[VerifyItem], *,
                            use_cache: bool = True) -> list[VerifyResult]:
        """:meth:`verify_batch`, awaitable; up to ``workers`` items run at once."""
        prepared = self.prepare(spec)
        futs = [self.pool.submit(self._run, prepared, it.completion, it.context, use_cache, it.id) for it in items]
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futs), return_exceptions=True)
        return [self._isolate(prepared, f, it.id) for f, it in zip(futs, items, strict=True)]

    def close(self) -> None:
        """Finish running work, stop the warm sandboxes this engine created, close the cache."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self._owns_sandbox and self.runtime.sandbox is not None:
            self.runtime.sandbox.close()
        if self.cache is not None:
            self.cache.close()


def _expose_toolchains(runtime: Runtime) -> None:
    """Bind toolchain directories that live under hidden paths (``~/.rustup``, a venv in
    ``/home``) back into the sandbox. Resolution is lazy per tool; Python is always exposed."""
    assert runtime.sandbox is not None
    for p in runtime.toolchains.get("python").expose:
        runtime.sandbox.add_expose(p)
