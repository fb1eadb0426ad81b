"""The engine: loaded models (LRU under a memory budget) and the scheduler that batches requests.

One engine thread owns every backend call (loading, tokenizing, stepping), so models are never
touched concurrently and the asyncio loop only moves bytes. The thread loops:

1. run queued commands (load, unload, tokenize, score, cancel) — :meth:`Engine.call`;
2. admit waiting sequences into their model's session up to the batch limit (continuous
   batching: a sequence joins the running batch at the next step);
3. ``session.step()`` for every model with active sequences and turn the token events into
   per-request outputs: stop strings (text held back while it could still become a stop string,
   never returned), ``max_tokens``, finish reasons, logprobs.

Use from asyncio::

    engine = Engine(catalog, EngineConfig(max_batch_size=8))
    engine.start()
    stream = await engine.generate(GenerateInput(model_id="tiny", prompt_ids=[...], params=..., n=2))
    async for out in stream:            # SeqOutput per choice and step; out.finish_reason on the last
        ...
    # leaving the loop early (client gone): stream.cancel() frees the slots
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from halo_common.errors import BadRequest, HaloError, Unavailable

from halo_serve.core.backends import make_backend
from halo_serve.core.backends.base import (
    GenerationRequest,
    GenerationSession,
    LoadedModel,
    ModelSource,
    PromptScore,
    SamplingParams,
    ServeBackend,
    TokenEvent,
    TopLogprob,
)
from halo_serve.core.models import ModelCatalog, ModelSpec

log = logging.getLogger("halo_serve.engine")
T = TypeVar("T")


class ContextLengthExceeded(BadRequest):
    """Prompt (+ max_tokens) longer than the model's context (OpenAI code ``context_length_exceeded``)."""


class Overloaded(HaloError):
    """The queue is full: HTTP 429 with Retry-After."""

    code = 429
    type = "rate_limit_error"


@dataclass
class EngineConfig:
    max_batch_size: int = 16
    max_queue: int = 256  # sequences waiting for a batch slot before requests get 429
    memory_budget_bytes: int = 0  # 0 = unlimited
    max_loaded_models: int = 8
    #: Shortest gap between two chunks of one stream (seconds; 0 = a chunk per engine step). The
    #: first output always leaves at once; tokens made within the gap leave together as one chunk.
    stream_interval_s: float = 0.0
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class GenerateInput:
    """One request: ``n`` sequences from the same prompt."""

    model_id: str
    prompt_ids: list[int]
    params: SamplingParams
    n: int = 1
    stop: list[str] = field(default_factory=list)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[TopLogprob]


@dataclass
class SeqOutput:
    """New output of choice ``index`` since the last one."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None = None
    completion_tokens: int = 0


@dataclass
class Loaded:
    """A loaded base model: its backend, handle, session, and the ids served from it."""

    spec: ModelSpec
    backend: ServeBackend
    model: LoadedModel
    session: GenerationSession
    last_used: float = field(default_factory=time.monotonic)
    waiting: deque[tuple[GenerationRequest, _SeqState]] = field(default_factory=deque)
    running: dict[str, _SeqState] = field(default_factory=dict)


class _SeqState:
    """Engine-side state of one sequence: stop strings, max_tokens, text held back."""

    def __init__(self, stream: RequestStream, index: int, stop: list[str], max_tokens: int, logprobs: bool,
                 token_str: Callable[[int], str]) -> None:
        self.stream = stream
        self.index = index
        self.stop = stop
        self.max_tokens = max_tokens
        self.want_logprobs = logprobs
        self.token_str = token_str
        self.text = ""
        self.emitted = 0  # chars of text already sent
        self.tokens = 0
        # token ids / logprobs not yet sent, with the text offset each token starts at
        self.pending: list[tuple[int, int, TokenLogprob | None]] = []
        self.finished = False
        self.first_token_at: float | None = None

    def feed(self, ev: TokenEvent) -> tuple[SeqOutput | None, bool]:
        """Apply one token event; returns (output to send or None, sequence finished)."""
        self.tokens += 1
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        start = len(self.text)
        self.text += ev.text
        lp = None
        if self.want_logprobs and ev.logprob is not None and not (ev.finish_reason == "stop" and ev.text == ""):
            lp = TokenLogprob(self.token_str(ev.token_id), ev.logprob, list(ev.top_logprobs or []))
        if not (ev.finish_reason == "stop" and ev.text == ""):
            self.pending.append((ev.token_id, start, lp))
        finish: str | None = ev.finish_reason
        cut = len(self.text)
        by_stop = False
        if self.stop:
            hit = _find_stop(self.text, self.stop, max(0, start - max(len(s) for s in self.stop)))
            if hit is not None:
                cut, finish, by_stop = hit, "stop", True
        if finish is None and self.tokens >= self.max_tokens:
            finish = "length"
        if finish is not None:
            self.finished = True
            return self._flush(cut, finish, by_stop), True
        # Hold back a tail that could still grow into a stop string.
        safe = len(self.text) - _stop_prefix_len(self.text, self.stop) if self.stop else len(self.text)
        if safe <= self.emitted and not self.want_logprobs:
            return None, False
        out = self._flush(safe, None)
        return (out if (out.text or out.logprobs or out.token_ids) else None), False

    def _flush(self, upto: int, finish: str | None, by_stop: bool = False) -> SeqOutput:
        text = self.text[self.emitted:upto] if upto > self.emitted else ""
        self.emitted = max(self.emitted, upto)
        send: list[tuple[int, int, TokenLogprob | None]] = []
        keep: list[tuple[int, int, TokenLogprob | None]] = []
        for item in self.pending:
            # A token is released once the text it starts in is released. At the end every token
            # goes out (also one that ends inside a multi-byte character, text ""), except after a
            # stop string: tokens starting at or after it are dropped with it.
            release = item[1] < upto or (finish is not None and not by_stop)
            (send if release else keep).append(item)
        if finish is not None:
            keep = []
        self.pending = keep
        return SeqOutput(
            index=self.index, text=text, token_ids=[t for t, _, _ in send],
            logprobs=[lp for _, _, lp in send if lp is not None] if self.want_logprobs else None,
            finish_reason=finish, completion_tokens=self.tokens,
        )


def _find_stop(text: str, stops: list[str], start: int) -> int | None:
    best = None
    for s in stops:
        i = text.find(s, start)
        if i != -1 and (best is None or i < best):
            best = i
    return best


def _stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class RequestStream:
    """Async iterator of a request's :class:`SeqOutput`; ``cancel()`` stops its sequences.

    The engine thread hands outputs over with :meth:`deliver`; the event loop is woken only when the consumer
    waits for them — not while it holds a chunk back for the stream interval (then only a finish or an error
    wakes it), so a fast model does not pay a loop wake-up per token on top of its step."""

    def __init__(self, engine: Engine, request_id: str, n: int, loop: asyncio.AbstractEventLoop,
                 interval_s: float = 0.0) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.request_id = request_id
        self.n = n
        self.loop = loop
        self.open = n
        self.prompt_tokens = 0
        self.submitted_at = time.monotonic()
        self.first_output_at: float | None = None
        self.token_times: list[float] = []  # engine time each token was produced (server-side trace)
        self.engine_open = n  # choices the engine has not finished yet
        self.finished_at: float | None = None  # when the engine produced the last token
        self._lock = threading.Lock()  # guards the fields below (the engine thread and the loop share them)
        self._pending: deque[list[SeqOutput] | BaseException] = deque()
        self._final_pending = False  # a finish or an error is among the pending items
        self._wake: asyncio.Future[None] | None = None  # set while the consumer waits
        self._quiet_until = 0.0  # time.monotonic() before which only a finish or an error wakes it
        self._wake_sent = False

    def deliver(self, items: list[SeqOutput] | BaseException) -> None:
        """Called from the engine thread."""
        final = isinstance(items, BaseException) or any(o.finish_reason is not None for o in items)
        with self._lock:
            self._pending.append(items)
            self._final_pending = self._final_pending or final
            if self._wake is None or self._wake_sent or (not final and time.monotonic() < self._quiet_until):
                return
            self._wake_sent = True
            wake = self._wake
        self.loop.call_soon_threadsafe(_set_done, wake)

    async def _wait(self, quiet_until: float | None = None) -> None:
        """Until something is pending; with ``quiet_until``, until a finish or an error is pending or that
        time (``time.monotonic()``) has come."""
        with self._lock:
            if self._pending and (quiet_until is None or self._final_pending):
                return
            if quiet_until is not None and time.monotonic() >= quiet_until:
                return
            wake = self._wake = self.loop.create_future()
            self._wake_sent = False
            self._quiet_until = quiet_until or 0.0
        try:
            if quiet_until is None:
                await wake
            else:
                await asyncio.wait_for(wake, max(0.0, quiet_until - time.monotonic()))
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._wake, self._quiet_until = None, 0.0

    def _take(self) -> tuple[list[SeqOutput], BaseException | None]:
        """Every pending output in order, and the error that came after them (if one did)."""
        out: list[SeqOutput] = []
        with self._lock:
            while self._pending:
                item = self._pending.popleft()
                if isinstance(item, BaseException):
                    return out, item  # nothing is delivered after an error
                out.extend(item)
            self._final_pending = False
        return out, None

    def __aiter__(self) -> AsyncIterator[SeqOutput]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[SeqOutput]:
        sent_at = -float("inf")
        try:
            while self.open > 0:
                await self._wait()
                # Within the stream interval of the last chunk, the next steps' tokens join this one; a finish
                # (or an error) ends the wait at once. Outputs that piled up while the consumer was busy (a
                # slow client, a loaded host) leave together too: one group per choice, so the per-chunk cost
                # (JSON, SSE, two HTTP hops) is paid once, not per token.
                if time.monotonic() < sent_at + self.interval_s:
                    await self._wait(quiet_until=sent_at + self.interval_s)
                items, error = self._take()
                for out in _coalesce(items) if len(items) > 1 else items:
                    if out.finish_reason is not None:
                        self.open -= 1
                    yield out
                if error is not None:
                    raise error
                sent_at = time.monotonic()
        finally:
            if self.open > 0:
                self.cancel()

    def cancel(self) -> None:
        """Stop every sequence of this request (client gone); frees their batch slots."""
        self.open = 0
        self.engine.cancel(self.request_id, self.n)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _coalesce(items: list[SeqOutput]) -> list[SeqOutput]:
    """Outputs of one choice merged into one (text, ids and logprobs in order; the last one's finish and
    count — nothing follows a finish), choices in the order they first appear."""
    merged: dict[int, SeqOutput] = {}
    for o in items:
        m = merged.get(o.index)
        if m is None:
            merged[o.index] = SeqOutput(o.index, o.text, list(o.token_ids),
                                        list(o.logprobs) if o.logprobs is not None else None,
                                        o.finish_reason, o.completion_tokens)
            continue
        m.text += o.text
        m.token_ids.extend(o.token_ids)
        if o.logprobs:
            m.logprobs = (m.logprobs or []) + list(o.logprobs)
        m.finish_reason, m.completion_tokens = o.finish_reason, o.completion_tokens
    return list(merged.values())


def choice_seed(seed: int | None, index: int) -> int | None:
    """Seed of choice ``index``: the request's seed for choice 0, a derived one for the others."""
    if seed is None or index == 0:
        return seed
    return int.from_bytes(hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest(), "big") >> 1


class Engine:
    """Model manager + scheduler (see the module docstring)."""

    def __init__(self, catalog: ModelCatalog, config: EngineConfig | None = None,
                 observer: Any = None) -> None:
        self.catalog = catalog
        self.config = config or EngineConfig()
        self.observer = observer  # optional metrics hooks (halo_serve.metrics.ServeMetrics)
        self.backends: dict[str, ServeBackend] = {}
        self.loaded: OrderedDict[str, Loaded] = OrderedDict()  # base id -> Loaded, LRU order
        self.adapters: dict[str, tuple[str, str]] = {}  # adapter model id -> (base id, adapter name)
        self._commands: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._cancels: deque[tuple[str, int]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.waiting_count = 0
        self.on_model_event: Callable[[str, str, dict[str, Any]], None] | None = None
        self.traces: OrderedDict[str, RequestStream] = OrderedDict()  # recent requests (debug traces)

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="serve-engine", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for lm in list(self.loaded.values()):
            self._unload_base(lm.spec.id, reason="shutdown")

    # ---- thread-safe entry points ----------------------------------------------------------------
    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn()`` on the engine thread between steps."""
        fut: Future[T] = Future()
        with self._cond:
            self._commands.append((fn, fut))
            self._cond.notify()
        return fut

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``await`` ``fn(*args)`` run on the engine thread."""
        return await asyncio.wrap_future(self.submit(lambda: fn(*args)))

    def cancel(self, request_id: str, n: int) -> None:
        with self._cond:
            self._cancels.append((request_id, n))
            self._cond.notify()

    # ---- models (engine thread) ------------------------------------------------------------------
    def ensure_loaded(self, model_id: str) -> tuple[Loaded, str | None]:
        """The loaded base serving ``model_id`` and the adapter name (None for a base id)."""
        spec = self.catalog.resolve(model_id)
        if spec.is_adapter:
            assert spec.base_id is not None
            lm, _ = self.ensure_loaded(spec.base_id)
            if model_id not in lm.model.adapters:
                lm.backend.load_adapter(lm.model, model_id, spec.adapter_path or "")
                self.adapters[model_id] = (lm.spec.id, model_id)
                self._emit("adapter-loaded", model_id, {"base": lm.spec.id, "path": spec.adapter_path})
            return lm, model_id
        lm = self.loaded.get(spec.id)
        if lm is None:
            lm = self._load_base(spec)
        self.loaded.move_to_end(spec.id)
        lm.last_used = time.monotonic()
        return lm, None

    def _backend(self, name: str) -> ServeBackend:
        if name not in self.backends:
            opts = dict(self.config.backend_options.get(name, {}))
            opts.setdefault("max_batch_size", self.config.max_batch_size)
            try:
                self.backends[name] = make_backend(name, **opts)
            except TypeError:
                self.backends[name] = make_backend(name)
        return self.backends[name]

    def _load_base(self, spec: ModelSpec) -> Loaded:
        assert spec.path is not None
        backend = self._backend(spec.backend)
        self._make_room(_estimate_bytes(spec.path))
        t0 = time.monotonic()
        model = backend.load(ModelSource(spec.path, spec.format, dict(spec.options)))  # type: ignore[arg-type]
        lm = Loaded(spec, backend, model, backend.open_session(model))
        self.loaded[spec.id] = lm
        seconds = time.monotonic() - t0
        log.info("loaded %s (%s, %s) in %.2fs", spec.id, spec.format, spec.backend, seconds)
        if self.observer is not None:
            self.observer.model_loaded(spec.backend, seconds)
        self._emit("loaded", spec.id, {"backend": spec.backend, "format": spec.format, "path": spec.path,
                                       "memory_bytes": model.memory_bytes, "load_seconds": seconds})
        return lm

    def _make_room(self, need: int) -> None:
        """Evict least-recently-used idle models until ``need`` more bytes fit the budget."""
        budget = self.config.memory_budget_bytes
        while self.loaded and (
            len(self.loaded) >= self.config.max_loaded_models
            or (budget and self.memory_bytes() + need > budget)
        ):
            victim = next((k for k, lm in self.loaded.items() if not lm.running and not lm.waiting), None)
            if victim is None:
                raise Unavailable("every loaded model is busy and the memory budget is full; retry later")
            self._unload_base(victim, reason="evicted")

    def _unload_base(self, base_id: str, reason: str) -> None:
        lm = self.loaded.pop(base_id, None)
        if lm is None:
            return
        for st in list(lm.running.values()) + [s for _, s in lm.waiting]:
            if not st.finished:
                st.finished = True
                st.stream.deliver(Unavailable(f"model {base_id} was unloaded ({reason})"))
        lm.session.close()
        lm.backend.unload(lm.model)
        for aid in [a for a, (b, _) in self.adapters.items() if b == base_id]:
            del self.adapters[aid]
        self._emit("unloaded", base_id, {"reason": reason})

    def unload(self, model_id: str) -> bool:
        """Unload a base model (and its adapters) or detach one adapter. Engine thread."""
        if model_id in self.adapters:
            base_id, name = self.adapters.pop(model_id)
            lm = self.loaded[base_id]
            lm.backend.unload_adapter(lm.model, name)
            self._emit("unloaded", model_id, {"reason": "requested"})
            return True
        if model_id in self.loaded:
            self._unload_base(model_id, reason="requested")
            return True
        return False

    def memory_bytes(self) -> int:
        return sum(lm.model.memory_bytes for lm in self.loaded.values())

    def _emit(self, kind: str, model_id: str, info: dict[str, Any]) -> None:
        if self.on_model_event is not None:
            try:
                self.on_model_event(kind, model_id, info)
            except Exception:  # an event sink must never break the engine
                log.exception("model event handler failed")

    # ---- generation ------------------------------------------------------------------------------
    async def generate(self, inp: GenerateInput) -> RequestStream:
        """Queue ``inp``'s ``n`` sequences; returns the stream of their outputs."""
        if self.waiting_count + inp.n > self.config.max_queue:
            raise Overloaded(f"the server has {self.waiting_count} sequences queued (max_queue "
                             f"{self.config.max_queue}); retry later")
        stream = RequestStream(self, inp.request_id, inp.n, asyncio.get_running_loop(), self.config.stream_interval_s)
        stream.prompt_tokens = len(inp.prompt_ids)
        await self.call(self._enqueue, inp, stream)
        self.traces[inp.request_id] = stream
        while len(self.traces) > 256:
            self.traces.popitem(last=False)
        return stream

    def _enqueue(self, inp: GenerateInput, stream: RequestStream) -> None:
        lm, adapter = self.ensure_loaded(inp.model_id)
        ctx = lm.model.context_length
        if len(inp.prompt_ids) >= ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {ctx} tokens, but the prompt has "
                f"{len(inp.prompt_ids)} tokens", param="messages")
        max_tokens = min(inp.params.max_tokens, ctx - len(inp.prompt_ids))

        def token_str(t: int, _lm: Loaded = lm) -> str:
            return _lm.backend.token_strings(_lm.model, [t])[0]

        for i in range(inp.n):
            params = replace(inp.params, seed=choice_seed(inp.params.seed, i), max_tokens=max_tokens)
            req = GenerationRequest(f"{inp.request_id}/{i}", list(inp.prompt_ids), params, adapter)
            lm.waiting.append((req, _SeqState(stream, i, inp.stop, max_tokens, inp.params.logprobs, token_str)))
            self.waiting_count += 1

    def check_prompt(self, model_id: str, prompt_len: int, max_tokens: int | None) -> int:
        """Engine thread: validate a prompt length against the context; returns max_tokens to use."""
        lm, _ = self.ensure_loaded(model_id)
        ctx = lm.model.context_length
        if prompt_len >= ctx or (max_tokens is not None and prompt_len + max_tokens > ctx):
            what = f"{prompt_len} in the prompt" + (f" + {max_tokens} max_tokens" if max_tokens else "")
            raise ContextLengthExceeded(
                f"This model's maximum context length is {ctx} tokens, but you requested {what}; "
                "shorten the prompt or max_tokens", param="max_tokens" if prompt_len < ctx else "messages")
        return max_tokens if max_tokens is not None else ctx - prompt_len

    def score(self, model_id: str, token_ids: list[int], top: int) -> PromptScore:
        """Engine thread: prompt logprobs (echo + logprobs)."""
        lm, adapter = self.ensure_loaded(model_id)
        return lm.backend.score_prompt(lm.model, token_ids, top, adapter)

    def stats(self) -> dict[str, Any]:
        """Snapshot for health / metrics (approximate, read without locks)."""
        return {
            "loaded": list(self.loaded), "adapters": dict(self.adapters),
            "running": sum(len(lm.running) for lm in list(self.loaded.values())),
            "waiting": self.waiting_count, "memory_bytes": self.memory_bytes(),
        }

    # ---- the loop --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stop or self._commands or self._cancels or self._has_work()):
                    self._cond.wait()
                if self._stop:
                    return
                commands = list(self._commands)
                self._commands.clear()
                cancels = list(self._cancels)
                self._cancels.clear()
            for fn, fut in commands:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:  # delivered to the awaiting request
                        fut.set_exception(exc)
            for rid, n in cancels:
                self._cancel_now(rid, n)
            for lm in list(self.loaded.values()):
                try:
                    self._step(lm)
                except Exception as exc:  # a failing model must not take the others down
                    log.exception("step of %s failed", lm.spec.id)
                    self._fail_all(lm, exc)

    def _has_work(self) -> bool:
        return any(lm.running or lm.waiting for lm in self.loaded.values())

    def _cancel_now(self, request_id: str, n: int) -> None:
        for lm in self.loaded.values():
            for i in range(n):
                sid = f"{request_id}/{i}"
                st = lm.running.pop(sid, None)
                if st is not None:
                    st.finished = True
                    lm.session.release(sid)
            before = len(lm.waiting)
            lm.waiting = deque((r, s) for r, s in lm.waiting if not r.request_id.startswith(f"{request_id}/"))
            self.waiting_count -= before - len(lm.waiting)

    def _fail_all(self, lm: Loaded, exc: Exception) -> None:
        err = exc if isinstance(exc, HaloError) else HaloError(f"generation failed: {exc}")
        for sid, st in list(lm.running.items()):
            lm.session.release(sid)
            if not st.finished:
                st.finished = True
                st.stream.deliver(err)
        lm.running.clear()

    def _step(self, lm: Loaded) -> None:
        limit = max(1, min(self.config.max_batch_size, lm.model.max_batch_size))
        while lm.waiting and len(lm.running) < limit:
            req, st = lm.waiting.popleft()
            self.waiting_count -= 1
            try:
                lm.session.add(req)
            except Exception as exc:
                st.finished = True
                st.stream.deliver(exc)
                continue
            lm.running[req.request_id] = st
        if not lm.running:
            return
        lm.last_used = time.monotonic()
        batch = len(lm.running)
        t0 = time.monotonic()
        events = lm.session.step()
        now = time.monotonic()
        per_stream: dict[int, tuple[RequestStream, list[SeqOutput]]] = {}
        for ev in events:
            st = lm.running.get(ev.request_id)
            if st is None:
                continue
            first = st.first_token_at is None
            out, done = st.feed(ev)
            st.stream.token_times.append(now)
            if first and self.observer is not None:
                self.observer.first_token(now - st.stream.submitted_at)
            if done:
                st.stream.engine_open -= 1
                if st.stream.engine_open == 0:
                    st.stream.finished_at = now
                del lm.running[ev.request_id]
                if ev.finish_reason is None:  # the backend still holds it (stop string / max_tokens)
                    lm.session.release(ev.request_id)
            if out is not None:
                per_stream.setdefault(id(st.stream), (st.stream, []))[1].append(out)
        for stream, outs in per_stream.values():
            stream.deliver(outs)
        if self.observer is not None:
            self.observer.step(lm.backend.name, batch, len(events), now - t0)


def _estimate_bytes(path: str) -> int:
    """Memory a model at ``path`` will take, from its weight files (0 when unknown, e.g. a Hub id)."""
    from pathlib import Path

    p = Path(path).expanduser()
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for pat in ("*.safetensors", "*.bin", "*.gguf") for f in p.glob(pat))
    return 0
