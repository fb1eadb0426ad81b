"""Verifier rewards of trainer-mlx's RL recipe (GRPO): the job's verifiers, weighted, called in batches.

::

    reward = VerifierReward(spec.verifiers, make_transport(spec.verifier_transport))
    reward.check()                                   # unknown verifier / bad params fail here, before any model loads
    scored = reward.score(texts, contexts)           # scored.total[i] in [0, 1] or None; scored.stats()

The total of a completion is the weighted mean of the graduated rewards (each in [0, 1], partial credit kept) of
the verifiers that could check it; None when none could (the completion then gets no advantage). The same rule
as trainer-torch's rewards, built here on the shared libraries only: ``local`` runs
:class:`halo_verifiers.engine.VerifierEngine` in this process, ``bus`` sends batches to verifier-sandbox through
:class:`halo_clients.verifier_sandbox.VerifierClient` on a private NATS connection (the recipe runs in a worker
thread; the connection lives on its own event loop thread).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from halo_common.errors import HaloError, Unavailable
from halo_schemas.rl import VerifierRef, resolve_labels
from halo_schemas.verifiers import VerifierSpec, VerifyContext, VerifyItem, VerifyResult


class Transport(Protocol):
    def check(self, specs: Sequence[VerifierSpec], timeout_s: float) -> None: ...

    def verify(self, spec: VerifierSpec, items: list[VerifyItem], use_cache: bool,
               timeout_s: float) -> list[VerifyResult]: ...

    def close(self) -> None: ...


class LocalTransport:
    """The verifier library in this process (same verifiers, sandbox and cache as verifier-sandbox)."""

    def __init__(self, workers: int | None = None) -> None:
        from halo_verifiers.engine import VerifierEngine

        self.engine = VerifierEngine.create(workers=workers)

    def check(self, specs: Sequence[VerifierSpec], timeout_s: float) -> None:
        for s in specs:
            self.engine.prepare(s)  # NotFound / BadRequest naming params.<field>

    def verify(self, spec: VerifierSpec, items: list[VerifyItem], use_cache: bool,
               timeout_s: float) -> list[VerifyResult]:
        return self.engine.verify_batch(spec, items, use_cache=use_cache)

    def close(self) -> None:
        self.engine.close()


class BusTransport:
    """verifier-sandbox over NATS (``HALO_NATS_URL``), from a synchronous worker thread."""

    def __init__(self, nats_url: str, connect_timeout_s: float = 5.0) -> None:
        from halo_bus import NatsBus
        from halo_clients.verifier_sandbox import VerifierClient

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="halo-mlx-verifier-bus", daemon=True)
        self._thread.start()
        try:
            self.bus = self._run(NatsBus.connect(nats_url, name="trainer-mlx-rl", connect_timeout=connect_timeout_s,
                                                 ensure_streams=False), connect_timeout_s + 5.0)
        except Exception as exc:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise Unavailable(f"cannot connect to NATS at {nats_url} for verifier calls: {exc}",
                              param="verifier_transport") from None
        self.client = VerifierClient(self.bus)

    def _run(self, coro: Any, timeout_s: float) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout=timeout_s)
        except TimeoutError:
            fut.cancel()
            raise Unavailable(f"verifier-sandbox did not answer within {timeout_s:.0f}s "
                              "(is `python -m halo_verifier_sandbox` running?)") from None

    def check(self, specs: Sequence[VerifierSpec], timeout_s: float) -> None:
        # One empty completion per verifier: the service validates the spec before any work.
        async def probe() -> None:
            await asyncio.gather(*(self.client.verify(s, "", VerifyContext(), timeout_s=min(timeout_s, 30.0))
                                   for s in specs))

        try:
            self._run(probe(), timeout_s)
        except HaloError:
            raise
        except Exception as exc:
            raise Unavailable(f"cannot reach verifier-sandbox over the bus: {exc}") from None

    def verify(self, spec: VerifierSpec, items: list[VerifyItem], use_cache: bool,
               timeout_s: float) -> list[VerifyResult]:
        return self._run(self.client.verify_batch(spec, items, use_cache=use_cache, timeout_s=timeout_s),
                         timeout_s + 5.0)

    def close(self) -> None:
        try:
            self._run(self.bus.close(), 5.0)
        except Exception:  # best effort: the thread is a daemon
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


def make_transport(kind: str) -> Transport:
    """``local`` (the verifier library here) or ``bus`` (verifier-sandbox at HALO_NATS_URL)."""
    if kind == "local":
        return LocalTransport()
    from halo_common.settings import HaloSettings

    return BusTransport(HaloSettings().nats_url)


@dataclass
class Scored:
    """Rewards of a batch of completions (index i = completion i)."""

    labels: list[str]
    per_verifier: dict[str, list[float | None]]
    total: list[float | None]
    success: list[bool]
    errors: list[str | None]
    seconds: float

    def stats(self) -> dict[str, float]:
        """reward_mean/std, reward_<label>_mean/std, pass_rate, verifier_error_ratio (metrics.jsonl names)."""
        out = _mean_std("reward", self.total)
        for label in self.labels:
            out.update(_mean_std(f"reward_{label}", self.per_verifier[label]))
        if self.total:
            out["pass_rate"] = sum(self.success) / len(self.total)
            out["verifier_error_ratio"] = sum(e is not None for e in self.errors) / len(self.total)
        return out


def _mean_std(prefix: str, values: Sequence[float | None]) -> dict[str, float]:
    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return {}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {f"{prefix}_mean": mean, f"{prefix}_std": std}


class VerifierReward:
    """The weighted verifier reward of an RL job."""

    def __init__(self, refs: Sequence[VerifierRef], transport: Transport, *, use_cache: bool = True,
                 timeout_s: float = 600.0) -> None:
        self.refs, self.labels = list(refs), resolve_labels(list(refs))
        total_w = sum(r.weight for r in self.refs)
        self.weights = [r.weight / total_w for r in self.refs]
        self.specs = [r.spec() for r in self.refs]
        self.transport, self.use_cache, self.timeout_s = transport, use_cache, timeout_s
        self.calls, self.seconds = 0, 0.0

    def check(self) -> None:
        self.transport.check(self.specs, self.timeout_s)

    def score(self, texts: Sequence[str], contexts: Sequence[VerifyContext]) -> Scored:
        t0 = time.monotonic()
        items = [VerifyItem(id=str(i), completion=t, context=c) for i, (t, c) in enumerate(zip(texts, contexts,
                                                                                                strict=True))]
        results = {label: (self.transport.verify(spec, items, self.use_cache, self.timeout_s) if items else [])
                   for label, spec in zip(self.labels, self.specs, strict=True)}
        per: dict[str, list[float | None]] = {}
        for label, rs in results.items():
            if len(rs) != len(items):
                raise HaloError(f"verifier {label} returned {len(rs)} results for {len(items)} completions")
            per[label] = [None if r.error_type else float(r.reward) for r in rs]
        total: list[float | None] = []
        success: list[bool] = []
        errors: list[str | None] = []
        for i in range(len(items)):
            num = den = 0.0
            ok, err = True, None
            for label, w in zip(self.labels, self.weights, strict=True):
                r = results[label][i]
                if r.error_type:  # could not check: left out of the mean, not counted as 0
                    ok, err = False, err or f"{label}: {r.error_type}"
                    continue
                num, den, ok = num + w * float(r.reward), den + w, ok and bool(r.success)
            total.append(num / den if den > 0 else None)
            success.append(ok and den > 0)
            errors.append(err)
        dt = time.monotonic() - t0
        self.calls, self.seconds = self.calls + 1, self.seconds + dt
        return Scored(self.labels, per, total, success, errors, dt)

    def close(self) -> None:
        self.transport.close()
