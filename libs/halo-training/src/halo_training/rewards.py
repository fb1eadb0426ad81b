"""Verifier-grounded rewards for the RL recipes of both trainers (trainer-torch's GRPO and RAFT, trainer-mlx's
GRPO): one or more verifiers with weights, called in batches.

::

    transport = make_transport("bus", client_name="trainer-torch-rl")  # private NATS connection (HALO_NATS_URL)
    reward = VerifierReward(spec.verifiers, transport)   # VerifierRef(name, weight, params) list
    reward.check()                                       # unknown verifier / bad params fail here, named
    batch = reward.score(completions, contexts)          # every verifier, concurrently, in batches
    batch.total[i], batch.reward("regex_format")[i], batch.success[i], batch.stats()

The total of a completion is the weighted mean of its verifiers' graduated rewards (each in [0, 1]; partial
credit is kept as is), so it is in [0, 1] too. A verifier that could not check a completion (its result
carries an ``error_type``: missing toolchain, missing context...) contributes nothing to that completion's
total; when none could, the total is None (GRPO then gives the completion no advantage, RAFT rejects it as
``verifier_error``).

Transports — the recipe runs in a worker thread, while the bus lives on an asyncio loop:

* :class:`PrivateBusTransport` (``bus``): its own event loop thread and NATS connection; batches go to
  ``halo.rpc.verifier-sandbox.verify-batch`` through :class:`~halo_clients.verifier_sandbox.VerifierClient`,
  all verifiers at once (``asyncio.gather``), each batch split in chunks the service instances share;
* :class:`BusTransport`: the same over a bus and loop someone else owns (``run_coroutine_threadsafe``);
* :class:`LocalTransport` (``local``): :class:`halo_verifiers.engine.VerifierEngine` in this process (unit
  tests, scripts).

``halo_clients`` / ``halo_bus`` and ``halo_verifiers`` are imported only by the transport that needs them (the
trainers depend on both; this library does not).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from halo_common.errors import HaloError, Unavailable
from halo_schemas.rl import VerifierRef, resolve_labels
from halo_schemas.verifiers import VerifierSpec, VerifyContext, VerifyItem, VerifyResult

log = logging.getLogger("halo_training.rewards")

#: A result whose best possible reward was this or less came from a compile-only check (docs/verifiers.md).
COMPILE_ONLY_MAX_REWARD = 0.5


class VerifierTransport(Protocol):
    """Runs batches of verifications; ``jobs`` are (spec, items) pairs, results come back in the same order."""

    name: str

    def verify_batches(self, jobs: Sequence[tuple[VerifierSpec, list[VerifyItem]]], *, use_cache: bool,
                       timeout_s: float) -> list[list[VerifyResult]]: ...

    def check(self, specs: Sequence[VerifierSpec], timeout_s: float) -> None: ...

    def close(self) -> None: ...


class LocalTransport:
    """The verifier library in this process (same verifiers, cache and sandbox as the service)."""

    name = "local"

    def __init__(self, engine: Any | None = None, workers: int | None = None) -> None:
        self._owns_engine = engine is None
        if engine is None:
            from halo_verifiers.engine import VerifierEngine

            engine = VerifierEngine.create(workers=workers)
        self.engine = engine

    def check(self, specs: Sequence[VerifierSpec], timeout_s: float) -> None:
        for s in specs:
            self.engine.prepare(s)  # NotFound / BadRequest naming params.<field>

    def verify_batches(self, jobs: Sequence[tuple[VerifierSpec, list[VerifyItem]]], *, use_cache: bool,
                       timeout_s: float) -> list[list[VerifyResult]]:
        # Each batch already runs in parallel on the engine's pool; verifiers one after another.
        return [self.engine.verify_batch(spec, items, use_cache=use_cache) for spec, items in jobs]

    def close(self) -> None:
        if self._owns_engine:  # ours: finish its work, stop its sandboxes, close its cache
            self.engine.close()
            return
        pool = getattr(self.engine, "pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class BusTransport:
    """verifier-sandbox over a bus whose event loop runs in another thread."""

    name = "bus"

    def __init__(self, bus: Any, loop: asyncio.AbstractEventLoop) -> None:
        from halo_clients.verifier_sandbox import VerifierClient

        self.bus, self.loop = bus, loop
        self.client = VerifierClient(bus)

    def _run(self, coro: Any, timeout_s: float) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout=timeout_s)
        except TimeoutError:
            fut.cancel()
            raise Unavailable(f"verifier-sandbox did not answer within {timeout_s:.0f}s "
                              "(is `python -m halo_verifier_sandbox` running?)") from None

    def check(self, specs: Sequence[VerifierSpec], timeout_s: float) -> None:
        # One empty completion per verifier: the service validates the spec (404 name, 400 params.<field>)
        # before any work, so a typo fails the job before a model is loaded.
        async def probe() -> None:
            await asyncio.gather(*(self.client.verify(s, "", VerifyContext(), use_cache=True,
                                                      timeout_s=min(timeout_s, 30.0)) for s in specs))

        try:
            self._run(probe(), timeout_s)
        except HaloError:
            raise
        except Exception as exc:  # transport problems read as "the service is not there"
            raise Unavailable(f"cannot reach verifier-sandbox over the bus: {exc}") from None

    def verify_batches(self, jobs: Sequence[tuple[VerifierSpec, list[VerifyItem]]], *, use_cache: bool,
                       timeout_s: float) -> list[list[VerifyResult]]:
        async def run_all() -> list[list[VerifyResult]]:
            return list(await asyncio.gather(*(self.client.verify_batch(s, items, use_cache=use_cache,
                                                                       timeout_s=timeout_s)
                                               for s, items in jobs)))

        return self._run(run_all(), timeout_s + 5.0)

    def close(self) -> None:
        pass


class PrivateBusTransport(BusTransport):
    """A NATS connection of its own, on an event loop in a daemon thread (the recipe's thread stays sync)."""

    def __init__(self, nats_url: str, connect_timeout_s: float = 5.0, *, client_name: str = "halo-rl") -> None:
        from halo_bus import NatsBus

        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="halo-rl-verifier-bus", daemon=True)
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            NatsBus.connect(nats_url, name=client_name, connect_timeout=connect_timeout_s,
                            ensure_streams=False, max_reconnect_attempts=-1), loop)
        try:
            bus = fut.result(timeout=connect_timeout_s + 5.0)
        except Exception as exc:
            loop.call_soon_threadsafe(loop.stop)
            raise Unavailable(f"cannot connect to NATS at {nats_url} for verifier calls: {exc}",
                              param="verifier_transport") from None
        super().__init__(bus, loop)

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.bus.close(), self.loop).result(timeout=5)
        except Exception:  # closing is best effort; the thread is a daemon
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


def make_transport(kind: str, *, nats_url: str | None = None, client_name: str = "halo-rl") -> VerifierTransport:
    """``bus`` (a private connection to ``nats_url`` or HALO_NATS_URL, named ``client_name`` on the NATS server,
    e.g. ``trainer-mlx-rl``) or ``local``."""
    if kind == "local":
        return LocalTransport()
    if kind != "bus":
        raise ValueError(f"unknown verifier transport {kind!r}")
    if nats_url is None:
        from halo_common.settings import HaloSettings

        nats_url = HaloSettings().nats_url
    return PrivateBusTransport(nats_url, client_name=client_name)


# ---- scoring -----------------------------------------------------------------------------------
def is_compile_only(result: VerifyResult) -> bool:
    """True when the best this result's context allowed was a compile check (reward ladder <= 0.5)."""
    top = result.metadata.get("max_reward")
    return isinstance(top, (int, float)) and top <= COMPILE_ONLY_MAX_REWARD + 1e-9


@dataclass
class RewardBatch:
    """Scores of a batch of completions (index i = completion i)."""

    labels: list[str]
    weights: list[float]  # normalised to sum 1
    results: dict[str, list[VerifyResult]]
    total: list[float | None]
    success: list[bool]
    compile_only: list[bool]
    errors: list[str | None]  # first verifier error of each completion ("label: error_type")
    seconds: float = 0.0

    def reward(self, label: str) -> list[float | None]:
        """Per-completion reward of one verifier (None where it could not check)."""
        return [None if r.error_type else float(r.reward) for r in self.results[label]]

    def __len__(self) -> int:
        return len(self.total)

    def stats(self) -> dict[str, float]:
        """Numbers for metrics: mean/std of the total and of each verifier, pass rate, error ratio."""
        out: dict[str, float] = {}
        out.update(_mean_std("reward", self.total))
        for label in self.labels:
            out.update(_mean_std(f"reward_{label}", self.reward(label)))
        n = len(self.total)
        if n:
            out["pass_rate"] = sum(self.success) / n
            out["verifier_error_ratio"] = sum(e is not None for e in self.errors) / n
        out["verify_seconds"] = self.seconds
        return out


def _mean_std(prefix: str, values: Sequence[float | None]) -> dict[str, float]:
    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return {}
    mean = sum(xs) / len(xs)
    # Sample standard deviation (Bessel), as TRL reports reward_std; 0 for a single value.
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {f"{prefix}_mean": mean, f"{prefix}_std": std}


def combine(labels: Sequence[str], weights: Sequence[float],
            results: dict[str, list[VerifyResult]]) -> tuple[list[float | None], list[bool], list[bool], list[str | None]]:
    """Weighted mean of the usable rewards of each completion; success = every verifier succeeded."""
    n = len(next(iter(results.values()))) if results else 0
    total: list[float | None] = []
    success: list[bool] = []
    compile_only: list[bool] = []
    errors: list[str | None] = []
    for i in range(n):
        num = den = 0.0
        ok = True
        comp = False
        err: str | None = None
        for label, w in zip(labels, weights, strict=True):
            r = results[label][i]
            if r.error_type:
                ok = False
                err = err or f"{label}: {r.error_type}"
                continue
            num += w * float(r.reward)
            den += w
            ok = ok and bool(r.success)
            comp = comp or is_compile_only(r)
        total.append(num / den if den > 0 else None)
        success.append(ok and den > 0)
        compile_only.append(comp)
        errors.append(err)
    return total, success, compile_only, errors


class VerifierReward:
    """Weighted verifier reward of an RL job. ``score`` calls every verifier on every completion."""

    def __init__(self, refs: Sequence[VerifierRef], transport: VerifierTransport, *, use_cache: bool = True,
                 timeout_s: float = 600.0) -> None:
        if not refs:
            raise ValueError("at least one verifier is needed")
        self.refs = list(refs)
        self.labels = resolve_labels(self.refs)
        total_w = sum(r.weight for r in self.refs)
        self.weights = [r.weight / total_w for r in self.refs]
        self.specs = [r.spec() for r in self.refs]
        self.transport = transport
        self.use_cache, self.timeout_s = use_cache, timeout_s
        self.calls = 0
        self.seconds = 0.0

    def check(self) -> None:
        """Validate every verifier spec with the verifier library / service (NotFound, BadRequest)."""
        self.transport.check(self.specs, self.timeout_s)

    def score(self, completions: Sequence[str], contexts: Sequence[VerifyContext]) -> RewardBatch:
        if len(completions) != len(contexts):
            raise ValueError(f"{len(completions)} completions but {len(contexts)} contexts")
        t0 = time.monotonic()
        items = [VerifyItem(id=str(i), completion=c, context=ctx) for i, (c, ctx) in
                 enumerate(zip(completions, contexts, strict=True))]
        if items:
            per = self.transport.verify_batches([(s, items) for s in self.specs], use_cache=self.use_cache,
                                                timeout_s=self.timeout_s)
        else:
            per = [[] for _ in self.specs]
        results = {label: list(rs) for label, rs in zip(self.labels, per, strict=True)}
        for label, rs in results.items():
            if len(rs) != len(items):
                raise HaloError(f"verifier {label} returned {len(rs)} results for {len(items)} completions")
        total, success, compile_only, errors = combine(self.labels, self.weights, results)
        dt = time.monotonic() - t0
        self.calls += 1
        self.seconds += dt
        return RewardBatch(self.labels, self.weights, results, total, success, compile_only, errors, seconds=dt)

    # ---- TRL adapter -------------------------------------------------------------------------
    def trl_reward_func(self, contexts_of: Callable[[dict[str, Any]], list[VerifyContext]],
                        texts_of: Callable[[list[Any], dict[str, Any]], list[str]],
                        on_batch: Callable[[RewardBatch, dict[str, Any]], None] | None = None) -> Callable[..., list[float | None]]:
        """A TRL reward function returning the weighted total of every verifier (one round of batches per call;
        the verifiers run concurrently). ``contexts_of(kwargs)`` / ``texts_of(completions, kwargs)`` map TRL's
        arguments to contexts and completion texts; ``on_batch`` sees each scored batch (metrics, samples).

        One function rather than one per verifier, so the advantage is computed from exactly the total that
        RAFT, the evaluation and the summary use (a verifier that could not check is left out of the mean,
        not counted as 0)."""

        def verifiers(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
            batch = self.score(texts_of(completions, kwargs), contexts_of(kwargs))
            if on_batch is not None:
                on_batch(batch, kwargs)
            return list(batch.total)

        return verifiers

    def close(self) -> None:
        self.transport.close()


@dataclass
class EvalResult:
    """Mean reward of a policy on held-out prompts."""

    prompts: int
    samples: int
    stats: dict[str, float] = field(default_factory=dict)
    greedy: dict[str, float] = field(default_factory=dict)

    def summary(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}{k}": v for k, v in self.stats.items() if k != "verify_seconds"}
        out.update({f"{prefix}greedy_{k}": v for k, v in self.greedy.items()
                    if k in ("reward_mean", "pass_rate")})
        return out
