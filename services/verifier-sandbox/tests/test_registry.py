"""One registry: decorator, HALO_HOME/verifiers/*.py plugins, the halo_forge.verifiers entry-point
group; broken plugins are reported, never fatal; params are validated; the inventory describes all."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from halo_common.errors import BadRequest, NotFound
from halo_schemas.verifiers import VerifierSpec, VerifyContext, VerifyStage
from halo_verifiers.base import Verifier, VerifierParams
from halo_verifiers.engine import VerifierEngine
from halo_verifiers.registry import REGISTRY, VerifierRegistry, register_verifier
from pydantic import Field

GOOD = '''
from pydantic import Field
from halo_verifier_sandbox import Verifier, VerifierParams, VerifyStage, register_verifier

class Params(VerifierParams):
    word: str = Field(description="Word that must appear.")
    times: int = Field(default=1, ge=1, description="How often.")

@register_verifier("contains_word", aliases=("has_word",))
class ContainsWord(Verifier):
    """Reward 1 when the completion contains a word often enough."""
    Params = Params
    kind = "text"

    def verify(self, completion, context):
        n = completion.split().count(self.params.word)
        return self.result(min(1.0, n / self.params.times), VerifyStage.SCORED, details={"count": n})
'''
FUNC = '''
from halo_verifier_sandbox import register_verifier

@register_verifier("starts_with_yes")
def yes(completion, context):
    """1.0 when the completion starts with 'yes'."""
    return completion.lower().startswith("yes")
'''
PLUGINS = {
    "good.py": GOOD,
    "func.py": FUNC,
    "broken_syntax.py": "def oops(:\n    pass\n",
    "raises.py": "from halo_verifier_sandbox import register_verifier\n\n\n@register_verifier('half_done')\n"
                 "def f(c, x):\n    return 1.0\n\nraise RuntimeError('plugin exploded')\n",
    "clash.py": "from halo_verifier_sandbox import register_verifier\n\n@register_verifier('gcc')\n"
                "def fake(c, x):\n    return 1.0\n",
    "nothing.py": "X = 1\n",
    "_helper.py": "raise RuntimeError('never imported')\n",
}


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "verifiers"
    d.mkdir()
    for name, src in PLUGINS.items():
        (d / name).write_text(src)
    return d


def test_plugin_dir_loads_good_and_reports_broken(plugin_dir: Path, engine: VerifierEngine) -> None:
    reg = REGISTRY.copy()
    names = reg.load_plugins(plugin_dir, group=None)
    assert sorted(names) == ["contains_word", "starts_with_yes"]
    entries = {e.name: e for e in reg.entries()}
    assert entries["contains_word"].origin == "plugin:good.py" and entries["gcc"].origin == "builtin"
    assert "half_done" not in entries  # rolled back with its failing plugin
    problems = {Path(p.source).name: p.error for p in reg.problems}
    assert set(problems) == {"broken_syntax.py", "raises.py", "clash.py", "nothing.py"}
    assert problems["broken_syntax.py"].startswith("SyntaxError")
    assert "plugin exploded" in problems["raises.py"] and "raises.py:" in problems["raises.py"]
    assert "already registered by builtin" in problems["clash.py"]
    assert "registered no verifier" in problems["nothing.py"]
    assert REGISTRY.resolve("gcc").origin == "builtin"  # the global registry is untouched
    with pytest.raises(NotFound):
        REGISTRY.resolve("contains_word")

    eng = VerifierEngine(engine.runtime, reg, workers=1)
    try:
        r = eng.verify(VerifierSpec(name="has_word", params={"word": "ok", "times": 2}), "ok then ok again")
        assert r.reward == 1.0 and r.verifier == "contains_word" and r.details["count"] == 2
        assert eng.verify(VerifierSpec(name="starts_with_yes"), "Yes indeed").reward == 1.0
        with pytest.raises(BadRequest) as err:
            eng.prepare(VerifierSpec(name="contains_word", params={"times": 0}))
        assert err.value.param == "params.word" and "params.times" in err.value.message
    finally:
        eng.close()

    inv = {v.name: v for v in reg.inventory(engine.runtime)}
    cw = inv["contains_word"]
    assert cw.origin == "plugin:good.py" and cw.doc == "Reward 1 when the completion contains a word often enough."
    assert cw.aliases == ["has_word"] and cw.kind == "text"
    params = {p.name: p for p in cw.parameters}
    assert params["word"].required and params["word"].type == "string"
    assert not params["times"].required and params["times"].default == 1 and params["times"].type == "integer"
    assert cw.params_schema["properties"]["times"]["minimum"] == 1
    assert inv["gcc"].sandboxed and inv["bleu"].available

    # Reloading drops what the previous load registered and reports afresh.
    (plugin_dir / "func.py").unlink()
    reg.load_plugins(plugin_dir, group=None)
    assert "starts_with_yes" not in reg.names() and "contains_word" in reg.names()


def test_entry_point_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: VerifierEngine) -> None:
    site = tmp_path / "site"
    dist = site / "halo_test_ep_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: halo-test-ep-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [halo_forge.verifiers]
        ep_len = halo_test_ep_mod:LengthVerifier
        ep_shout = halo_test_ep_mod:shout
        ep_missing = halo_test_ep_missing_mod:Nope
    """))
    (site / "halo_test_ep_mod.py").write_text(textwrap.dedent('''
        from halo_verifier_sandbox import Verifier, VerifyStage

        class LengthVerifier(Verifier):
            """Longer is better, up to 10 characters."""
            def verify(self, completion, context):
                return self.result(min(1.0, len(completion) / 10), VerifyStage.SCORED)

        def shout(completion, context):
            """All caps."""
            return completion.isupper()
    '''))
    monkeypatch.syspath_prepend(str(site))
    reg = REGISTRY.copy()
    names = reg.load_entry_points()
    assert sorted(names) == ["ep_len", "ep_shout"]
    origins = {e.name: e.origin for e in reg.entries()}
    assert origins["ep_len"] == origins["ep_shout"] == "entry-point:halo-test-ep-plugin"
    assert [p.source for p in reg.problems] == ["ep_missing = halo_test_ep_missing_mod:Nope"]
    assert "ModuleNotFoundError" in reg.problems[0].error
    eng = VerifierEngine(engine.runtime, reg, workers=1)
    try:
        assert eng.verify(VerifierSpec(name="ep_len"), "abcde").reward == 0.5
        assert eng.verify(VerifierSpec(name="ep_shout"), "LOUD").reward == 1.0
    finally:
        eng.close()


def test_decorator_into_a_registry_and_conflicts() -> None:
    reg = VerifierRegistry()

    class P(VerifierParams):
        threshold: float = Field(default=0.5, description="Cut-off.")

    @register_verifier("above", params=P, registry=reg)
    def above(completion: str, context: VerifyContext, params: P) -> dict:
        value = float(completion)
        return {"reward": 1.0 if value > params.threshold else 0.0, "details": {"value": value}}

    v = reg.build(VerifierSpec(name="above", params={"threshold": 2}), runtime=None)  # type: ignore[arg-type]
    r = v.verify("3", VerifyContext())
    assert r.reward == 1.0 and r.details == {"value": 3.0} and r.stage == VerifyStage.SCORED
    with pytest.raises(ValueError, match="invalid verifier name"):
        register_verifier("Bad Name", registry=reg)(above)
    with pytest.raises(TypeError, match="not a Verifier"):
        reg.register("thing", object)  # type: ignore[arg-type]
    other = VerifierRegistry()
    other.register("dup", type("V", (Verifier,), {"verify": lambda s, c, x: None}), origin="plugin:a.py")
    with pytest.raises(ValueError, match="already registered by plugin:a.py"):
        other.register("dup", type("W", (Verifier,), {"verify": lambda s, c, x: None}), origin="plugin:b.py")


def test_unknown_verifier_lists_the_known_ones() -> None:
    with pytest.raises(NotFound) as err:
        REGISTRY.resolve("gcc-13")
    assert err.value.param == "spec.name" and "gcc" in err.value.message and "humaneval" in err.value.message


def test_a_missing_python_module_makes_a_verifier_unavailable_with_its_hint(engine: VerifierEngine) -> None:
    reg = VerifierRegistry()

    @register_verifier("needs_module", registry=reg, origin="test")
    class NeedsModule(Verifier):
        """Needs a package that is not installed."""
        python_modules = ("json", "halo_no_such_module_anywhere")
        install_hint = "pip install halo-no-such-module"

        def verify(self, completion: str, context: VerifyContext):  # type: ignore[override]
            raise AssertionError("never called when unavailable")

    info = {v.name: v for v in reg.inventory(engine.runtime)}["needs_module"]
    assert not info.available and info.unavailable_reason == "halo_no_such_module_anywhere not installed"
    assert info.install_hint == "pip install halo-no-such-module"
    eng = VerifierEngine(engine.runtime, reg, cache=None, workers=1)
    try:
        r = eng.verify(VerifierSpec(name="needs_module"), "x")
    finally:
        eng.close()
    assert r.stage == VerifyStage.UNAVAILABLE and r.error_type == "unavailable"
    assert r.details["install_hint"] == "pip install halo-no-such-module"
