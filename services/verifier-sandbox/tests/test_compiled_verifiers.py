"""gcc, clang, mingw, rust, go and execution against their real toolchains: passing, partial and
failing inputs climb the documented ladder."""

from __future__ import annotations

from typing import Any

import pytest
from halo_schemas.verifiers import IOCase, VerifierSpec, VerifyContext, VerifyResult, VerifyStage
from halo_verifiers.engine import VerifierEngine
from halo_verifiers.toolchains import missing

ADD_C = '#include <stdio.h>\nint main(void){ long a, b; if (scanf("%ld %ld", &a, &b) != 2) return 2; printf("%ld\\n", a + b); return 0; }\n'
# Correct except when a == 0 (prints a - b instead), and crashes on negative a.
PARTIAL_C = ('#include <stdio.h>\n#include <stdlib.h>\nint main(void){ long a, b; scanf("%ld %ld", &a, &b);\n'
             '  if (a < 0) abort();\n  printf("%ld\\n", a == 0 ? a - b : a + b); return 0; }\n')
WARN_C = '#include <stdio.h>\nint main(void){ int unused; long a, b; scanf("%ld %ld", &a, &b); printf("%ld\\n", a + b); return 0; }\n'
BROKEN_C = "int main(void) { return missing_symbol + ; }\n"
CASES = VerifyContext(cases=[IOCase(stdin="1 2", expected_output="3"), IOCase(stdin="0 5", expected_output="5"),
                             IOCase(stdin="-4 4", expected_output="0"), IOCase(stdin="10 20", expected_output="30")])


def run(engine: VerifierEngine, name: str, completion: str, context: VerifyContext | None = None,
        **params: Any) -> VerifyResult:
    return engine.verify(VerifierSpec(name=name, params=params), completion, context or VerifyContext())


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_c_ladder(engine: VerifierEngine, compiler: str) -> None:
    ok = run(engine, compiler, f"```c\n{ADD_C}```", CASES)
    assert (ok.reward, ok.success, ok.stage) == (1.0, True, VerifyStage.CORRECT)
    assert ok.details["passed"] == 4 and ok.metadata["sandbox"] == "bwrap"

    partial = run(engine, compiler, PARTIAL_C, CASES)  # 3 of 4 ran, 2 of 4 correct
    assert partial.reward == pytest.approx(0.5 + 0.2 * 3 / 4 + 0.3 * 2 / 4)
    assert partial.stage == VerifyStage.COMPILED and not partial.success
    crashed = [c for c in partial.details["cases"] if not c["ran"]]
    assert len(crashed) == 1 and "SIGABRT" in crashed[0]["reason"]

    strict = run(engine, compiler, PARTIAL_C, CASES, partial_credit=False)
    assert strict.reward == 0.5

    warned = run(engine, compiler, WARN_C, CASES, partial_credit=False)
    assert warned.reward == 1.0 and any("unused" in w for w in warned.details["compile"]["warnings"])
    warned_wrong = run(engine, compiler, WARN_C, VerifyContext(stdin="1 1", expected_output="3"))
    assert warned_wrong.reward == pytest.approx(0.7) and warned_wrong.stage == VerifyStage.RAN

    broken = run(engine, compiler, BROKEN_C, CASES)
    assert (broken.reward, broken.stage, broken.success) == (0.0, VerifyStage.COMPILE, False)
    assert "error" in broken.details["compile"]["stderr"]


def test_compile_only_rewards(engine: VerifierEngine) -> None:
    warn_only = run(engine, "gcc", "int f(int x) { int y; return x; }\n")  # no main: compile-only
    assert warn_only.reward == pytest.approx(0.3) and warn_only.stage == VerifyStage.COMPILED
    clean = run(engine, "gcc", "int f(int x) { return x * 2; }\n")
    assert clean.reward == 0.5 and clean.success and clean.metadata["max_reward"] == 0.5
    no_cases = run(engine, "gcc", ADD_C.replace("return 2;", "return 0;"))  # runs once on empty stdin
    assert no_cases.reward == pytest.approx(0.7) and no_cases.success and no_cases.stage == VerifyStage.RAN


def test_cpp_with_gpp_and_std(engine: VerifierEngine) -> None:
    code = ("#include <iostream>\n#include <vector>\n#include <numeric>\nint main(){ std::vector<long> v; long x;\n"
            " while (std::cin >> x) v.push_back(x); std::cout << std::accumulate(v.begin(), v.end(), 0L) << std::endl; }\n")
    r = run(engine, "gcc", f"```cpp\n{code}```", CASES, std="c++17")
    assert r.reward == 1.0 and r.details["language"] == "cpp"
    bad_std = run(engine, "clang", code, CASES, language="cpp", std="c++99")
    assert bad_std.reward == 0.0 and bad_std.stage == VerifyStage.COMPILE


def test_mingw_cross_compiles_and_caps_at_compile(engine: VerifierEngine) -> None:
    r = run(engine, "mingw", ADD_C, CASES)
    assert (r.reward, r.stage, r.success) == (0.5, VerifyStage.COMPILED, True)
    assert "cases" not in r.details and r.metadata["max_reward"] == 0.5
    w = run(engine, "mingw", WARN_C)
    assert w.reward == pytest.approx(0.3) and not w.success
    b = run(engine, "mingw", BROKEN_C)
    assert b.reward == 0.0


def test_output_match_modes(engine: VerifierEngine) -> None:
    code = '#include <stdio.h>\nint main(void){ printf("pi is about %.5f\\n", 3.14159265); return 0; }\n'
    ctx = VerifyContext(expected_output="3.1416")
    assert run(engine, "gcc", code, ctx).reward == pytest.approx(0.7)  # exact fails
    assert run(engine, "gcc", code, ctx, match={"mode": "numeric", "rel_tol": 1e-4}).reward == 1.0
    assert run(engine, "gcc", code, VerifyContext(expected_output="about"), match={"mode": "contains"}).reward == 1.0
    assert run(engine, "gcc", code, VerifyContext(expected_output=r"pi is about 3\.\d+"),
               match={"mode": "regex"}).reward == 1.0


RUST_OK = ('use std::io::Read;\nfn main() { let mut s = String::new(); std::io::stdin().read_to_string(&mut s).unwrap();\n'
           '  let v: Vec<i64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();\n'
           '  println!("{}", v[0] + v[1]); }\n')


def test_rust(engine: VerifierEngine) -> None:
    ok = run(engine, "rust", f"```rust\n{RUST_OK}```", CASES)
    assert ok.reward == 1.0 and ok.details["toolchain"].startswith("rustc")
    panics = RUST_OK.replace('println!("{}", v[0] + v[1]);', 'if v[0] < 0 { panic!("neg"); } println!("{}", v[0] * v[1]);')
    partial = run(engine, "rust", panics, CASES)  # -4 panics; 1*2, 0*5, 10*20 run but are all wrong
    assert partial.reward == pytest.approx(0.5 + 0.2 * 3 / 4) and partial.stage == VerifyStage.COMPILED
    warn = run(engine, "rust", RUST_OK.replace("fn main() {", "fn main() { let unused = 1;"), CASES,
               partial_credit=False)
    assert warn.reward == 1.0 and warn.details["compile"]["warnings"]
    lib = run(engine, "rust", "pub fn add(a: i32, b: i32) -> i32 { a + b }\n")
    assert lib.reward == 0.5 and "library" in lib.details["note"]
    broken = run(engine, "rust", "fn main() { let x: i32 = \"no\"; }")
    assert broken.reward == 0.0 and "E0308" in broken.details["compile"]["stderr"]


GO_OK = 'package main\n\nimport "fmt"\n\nfunc main() {\n\tvar a, b int\n\tfmt.Scan(&a, &b)\n\tfmt.Println(a + b)\n}\n'


def test_go_cases_and_tests(engine: VerifierEngine) -> None:
    ok = run(engine, "go", f"```go\n{GO_OK}```", CASES)
    assert ok.reward == 1.0
    wrong = run(engine, "go", GO_OK.replace("a + b", "a - b"), CASES)  # runs, but every difference is wrong
    assert wrong.reward == pytest.approx(0.7) and wrong.stage == VerifyStage.RAN
    broken = run(engine, "go", GO_OK.replace("var a, b int", "var a, b, c int"))  # unused variable: an error in Go
    assert broken.reward == 0.0 and "declared" in broken.details["compile"]["stderr"]

    lib = "package main\n\nfunc Add(a, b int) int { if a < 0 { return 0 }; return a + b }\n\nfunc main() {}\n"
    tests = ('func TestPos(t *testing.T) { if Add(1, 2) != 3 { t.Fatal("1+2") } }\n'
             'func TestNeg(t *testing.T) { if Add(-1, 2) != 1 { t.Fatal("-1+2") } }\n'
             'func TestZero(t *testing.T) { if Add(0, 0) != 0 { t.Fatal("0") } }\n')
    tested = run(engine, "go", lib, VerifyContext(tests=tests))
    assert tested.details["passed"] == 2 and tested.details["total"] == 3
    assert tested.reward == pytest.approx(0.5 + 0.5 * 2 / 3) and tested.stage == VerifyStage.TESTED


def test_execution_python_and_languages(engine: VerifierEngine) -> None:
    py_ok = "a, b = map(int, input().split())\nprint(a + b)\n"
    assert run(engine, "execution", f"```python\n{py_ok}```", CASES).reward == 1.0
    py_partial = "a, b = map(int, input().split())\nassert a >= 0\nprint(a + b if a else 0)\n"
    r = run(engine, "execution", py_partial, CASES, language="python")
    assert r.reward == pytest.approx(0.5 + 0.2 * 3 / 4 + 0.3 * 2 / 4)
    syntax = run(engine, "execution", "def broken(:\n", CASES, language="python")
    assert syntax.reward == 0.0 and "SyntaxError" in syntax.details["compile"]["error"]
    assert run(engine, "execution", ADD_C, CASES, language="c").reward == 1.0
    assert run(engine, "execution", GO_OK, CASES).details["language"] == "go"


def test_execution_args_and_timeouts(engine: VerifierEngine) -> None:
    code = "import sys, time\nif sys.argv[1] == 'slow':\n    time.sleep(30)\nprint(sys.argv[1])\n"
    ctx = VerifyContext(cases=[IOCase(args=["fast"], expected_output="fast"), IOCase(args=["slow"], expected_output="slow")])
    r = run(engine, "execution", code, ctx, language="python", timeout_s=1)
    assert r.details["cases"][1]["reason"] == "timeout (wall clock)"
    assert r.reward == pytest.approx(0.5 + 0.2 / 2 + 0.3 / 2)


def test_empty_completion_and_missing_toolchain(engine: VerifierEngine) -> None:
    none = run(engine, "gcc", "   ")
    assert none.stage == VerifyStage.NONE and none.reward == 0.0
    saved = engine.runtime.toolchains.get("clang")
    engine.runtime.toolchains.set(missing("clang"))
    try:
        r = run(engine, "clang", ADD_C, CASES)
        assert r.stage == VerifyStage.UNAVAILABLE and r.error_type == "unavailable"
        assert r.details["install_hint"].startswith("apt-get install -y clang")
        inv = {v.name: v for v in engine.registry.inventory(engine.runtime)}
        assert not inv["clang"].available and "apt-get install -y clang" in (inv["clang"].install_hint or "")
        assert inv["gcc"].available
    finally:
        engine.runtime.toolchains.set(saved)
