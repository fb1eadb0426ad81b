"""The engine: content-addressed cache, in-flight dedup, order and per-item error isolation in
batches, and the multi/auto router."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from halo_common.errors import BadRequest
from halo_schemas.verifiers import IOCase, VerifierSpec, VerifyContext, VerifyItem, VerifyResult, VerifyStage
from halo_verifiers.base import Verifier
from halo_verifiers.cache import ResultCache
from halo_verifiers.engine import VerifierEngine
from halo_verifiers.registry import REGISTRY
from halo_verifiers.toolchains import missing

C_OK = '#include <stdio.h>\nint main(void){ int a, b; scanf("%d %d", &a, &b); printf("%d\\n", a * b); return 0; }\n'


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.lock = threading.Lock()

    def __call__(self, name: str, result: VerifyResult, cached: bool) -> None:
        with self.lock:
            self.calls.append((name, cached))

    @property
    def executed(self) -> int:
        return sum(1 for _, c in self.calls if not c)


@pytest.fixture
def cached_engine(engine: VerifierEngine, tmp_path: Path):  # noqa: ANN201
    rec = Recorder()
    eng = VerifierEngine(engine.runtime, REGISTRY.copy(), ResultCache(100, tmp_path / "cache.sqlite"), workers=2,
                         observer=rec)
    yield eng, rec
    eng.close()


def test_cache_hits_same_spec_completion_context(cached_engine) -> None:  # noqa: ANN001
    eng, rec = cached_engine
    spec = VerifierSpec(name="gcc")
    ctx = VerifyContext(stdin="6 7", expected_output="42")
    first = eng.verify(spec, C_OK, ctx)
    again = eng.verify(spec, C_OK, ctx)
    assert first.reward == again.reward == 1.0 and not first.cached and again.cached and again.duration_s == 0.0
    assert again.details == first.details and rec.executed == 1
    eng.verify(VerifierSpec(name="gcc", params={"flags": ["-O2"]}), C_OK, ctx)  # other params: a miss
    eng.verify(spec, C_OK, VerifyContext(stdin="2 2", expected_output="4"))  # other context: a miss
    eng.verify(spec, C_OK + "\n", ctx)  # other completion: a miss
    assert rec.executed == 4
    assert eng.verify(spec, C_OK, ctx, use_cache=False).cached is False and rec.executed == 5
    # The SQLite copy survives a new cache instance.
    assert eng.cache is not None
    path = eng.cache._db.execute("pragma database_list").fetchone()[2]  # type: ignore[union-attr]
    fresh = ResultCache(100, Path(path))
    assert len(fresh) == 0 and fresh.get(eng.key(eng.prepare(spec), C_OK, ctx)) is not None


def test_infrastructure_failures_are_not_cached(cached_engine) -> None:  # noqa: ANN001
    eng, rec = cached_engine
    saved = eng.runtime.toolchains.get("clang")
    eng.runtime.toolchains.set(missing("clang"))
    try:
        a = eng.verify(VerifierSpec(name="clang"), C_OK)
        b = eng.verify(VerifierSpec(name="clang"), C_OK)
        assert a.error_type == b.error_type == "unavailable" and not b.cached
    finally:
        eng.runtime.toolchains.set(saved)


def test_batch_order_dedup_and_isolation(engine: VerifierEngine) -> None:
    class Picky(Verifier):
        """Raises on 'boom', scores the length otherwise."""

        def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
            if completion == "boom":
                raise RuntimeError("verifier bug")
            return self.result(min(1.0, len(completion) / 10), VerifyStage.SCORED)

    reg = REGISTRY.copy()
    reg.register("picky", Picky, origin="api")
    rec = Recorder()
    eng = VerifierEngine(engine.runtime, reg, ResultCache(100), workers=2, observer=rec)
    try:
        texts = ["a", "boom", "abcde", "a", "a", "abcdefghijkl", "boom", "a"]
        items = [VerifyItem(id=f"i{n}", completion=t) for n, t in enumerate(texts)]
        results = eng.verify_batch(VerifierSpec(name="picky"), items)
        assert [r.id for r in results] == [f"i{n}" for n in range(len(texts))]
        assert [r.reward for r in results] == [0.1, 0.0, 0.5, 0.1, 0.1, 1.0, 0.0, 0.1]
        assert [r.error_type for r in results] == [None, "internal", None, None, None, None, "internal", None]
        assert "RuntimeError: verifier bug" in (results[1].error or "")
        # 'a' is computed once; errors are not cached, so each 'boom' runs.
        assert rec.executed == 5 and sum(r.cached for r in results) == 3
    finally:
        eng.close()


def test_multi_routes_by_language(engine: VerifierEngine) -> None:
    spec = VerifierSpec(name="auto")
    c = engine.verify(spec, f"```c\n{C_OK}```", VerifyContext(stdin="3 4", expected_output="12"))
    assert c.reward == 1.0 and c.metadata["routed_to"] == "gcc" and c.verifier == "multi"
    he = engine.verify(spec, "    return a * 2\n", VerifyContext(
        language="python", prompt="def dbl(a):\n", tests="def check(candidate):\n    assert candidate(2) == 4\n",
        entry_point="dbl"))
    assert he.reward == 1.0 and he.metadata["routed_to"] == "humaneval"
    mb = engine.verify(spec, "```python\ndef sq(x):\n    return x * x\n```", VerifyContext(tests=["assert sq(3) == 9"]))
    assert mb.metadata["routed_to"] == "mbpp" and mb.reward == 1.0
    py = engine.verify(spec, "```python\nprint(input()[::-1])\n```", VerifyContext(stdin="abc", expected_output="cba"))
    assert py.metadata["routed_to"] == "execution" and py.reward == 1.0
    js = engine.verify(spec, '{"a": 1}', VerifyContext(json_schema={"type": "object", "required": ["a"]}))
    assert js.metadata["routed_to"] == "json_schema" and js.reward == 1.0
    unknown = engine.verify(spec, "lorem ipsum dolor")
    assert unknown.error_type == "unknown_language"
    routed = engine.verify(VerifierSpec(name="multi", params={"routes": {"c": {"name": "clang"}}}), C_OK,
                           VerifyContext(cases=[IOCase(stdin="2 5", expected_output="10")]))
    assert routed.metadata["routed_to"] == "clang" and routed.reward == 1.0
    with pytest.raises(BadRequest) as err:
        engine.prepare(VerifierSpec(name="multi", params={"routes": {"c": {"name": "gcc", "params": {"nope": 1}}}}))
    assert "params.nope" in err.value.message
