"""cargo against the real toolchain: a binary crate on cases, a library crate with #[test]s."""

from __future__ import annotations

import pytest
from halo_schemas.verifiers import IOCase, VerifierSpec, VerifyContext, VerifyStage
from halo_verifiers.engine import VerifierEngine

LIB = """
pub fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}
"""
TESTS = """
#[test]
fn small() { assert_eq!(gcd(12, 18), 6); }
#[test]
fn zero() { assert_eq!(gcd(7, 0), 7); }
#[test]
fn coprime() { assert_eq!(gcd(9, 28), 1); }
#[test]
fn swapped() { assert_eq!(gcd(0, 5), 5); }
"""


def test_cargo_tests_pass_partial_fail(engine: VerifierEngine) -> None:
    spec = VerifierSpec(name="cargo")
    ctx = VerifyContext(tests=TESTS)
    ok = engine.verify(spec, f"```rust\n{LIB}```", ctx)
    assert (ok.reward, ok.stage, ok.details["passed"], ok.details["total"]) == (1.0, VerifyStage.CORRECT, 4, 4)
    # wrong only when a == 0 at the top: gcd(0, 5) returns 0
    partial = engine.verify(spec, LIB.replace("if b == 0 { a } else", "if b == 0 { a } else if a == 0 { 0 } else"), ctx)
    assert partial.details["passed"] == 3 and partial.reward == pytest.approx(0.875)
    assert [t["name"] for t in partial.details["tests"] if t["outcome"] == "failed"] == ["halo_tests::swapped"]
    broken = engine.verify(spec, "pub fn gcd(a: u64) -> u64 { a +  }", ctx)
    assert broken.reward == 0.0 and broken.stage == VerifyStage.COMPILE


def test_cargo_binary_runs_cases(engine: VerifierEngine) -> None:
    main = ('fn main() { let mut s = String::new(); std::io::stdin().read_line(&mut s).unwrap();\n'
            '  let n: u64 = s.trim().parse().unwrap(); println!("{}", (1..=n).product::<u64>()); }\n')
    ctx = VerifyContext(cases=[IOCase(stdin="5\n", expected_output="120"), IOCase(stdin="0\n", expected_output="1")])
    r = engine.verify(VerifierSpec(name="cargo"), main, ctx)
    assert r.reward == 1.0 and r.details["compile"]["ok"]
    warn = engine.verify(VerifierSpec(name="cargo"), main.replace("fn main() {", "fn main() { let x = 1;"),
                         VerifyContext(stdin="3\n", expected_output="7"))
    assert warn.details["compile"]["warnings"] and warn.reward == pytest.approx(0.7)
