"""bleu / chrf / rouge equal what sacrebleu and rouge-score compute directly; json_structure,
json_schema and regex_format with passing, partial and failing inputs."""

from __future__ import annotations

from typing import Any

import pytest
import sacrebleu
from halo_common.errors import BadRequest
from halo_schemas.verifiers import VerifierSpec, VerifyContext, VerifyResult, VerifyStage
from halo_verifiers.engine import VerifierEngine
from rouge_score import rouge_scorer
from sacrebleu.metrics import CHRF

HYPS = [
    "The quick brown fox jumps over the lazy dog.",
    "A fast brown fox leaped over a sleepy dog",
    "Completely unrelated sentence about databases.",
]
REFS = ["The quick brown fox jumped over the lazy dog.", "A quick brown fox jumps over a lazy dog."]


def run(engine: VerifierEngine, name: str, completion: str, context: VerifyContext | None = None,
        **params: Any) -> VerifyResult:
    return engine.verify(VerifierSpec(name=name, params=params), completion, context or VerifyContext())


@pytest.mark.parametrize("hyp", HYPS)
def test_bleu_equals_sacrebleu(engine: VerifierEngine, hyp: str) -> None:
    r = run(engine, "bleu", hyp, VerifyContext(references=REFS))
    assert r.reward == pytest.approx(sacrebleu.sentence_bleu(hyp, REFS).score / 100, abs=1e-6)
    single = run(engine, "bleu", hyp, VerifyContext(reference=REFS[0]), lowercase=True, smooth_method="floor",
                 smooth_value=0.1)
    want = sacrebleu.sentence_bleu(hyp, [REFS[0]], lowercase=True, smooth_method="floor", smooth_value=0.1)
    assert single.reward == pytest.approx(want.score / 100, abs=1e-6)


@pytest.mark.parametrize("hyp", HYPS)
def test_chrf_equals_sacrebleu(engine: VerifierEngine, hyp: str) -> None:
    r = run(engine, "chrf", hyp, VerifyContext(references=REFS))
    assert r.reward == pytest.approx(sacrebleu.sentence_chrf(hyp, REFS).score / 100, abs=1e-6)
    pp = run(engine, "chrf", hyp, VerifyContext(references=REFS), word_order=2)
    assert pp.reward == pytest.approx(CHRF(word_order=2).sentence_score(hyp, REFS).score / 100, abs=1e-6)


@pytest.mark.parametrize("hyp", HYPS)
@pytest.mark.parametrize("rtype", ["rouge1", "rouge2", "rougeL"])
def test_rouge_equals_rouge_score(engine: VerifierEngine, hyp: str, rtype: str) -> None:
    r = run(engine, "rouge", hyp, VerifyContext(references=REFS), rouge_type=rtype)
    scorer = rouge_scorer.RougeScorer([rtype], use_stemmer=True)
    assert r.reward == pytest.approx(scorer.score_multi(REFS, hyp)[rtype].fmeasure, abs=1e-6)
    rec = run(engine, "rouge", hyp, VerifyContext(reference=REFS[1]), rouge_type=rtype, measure="recall",
              use_stemmer=False)
    assert rec.reward == pytest.approx(rouge_scorer.RougeScorer([rtype]).score(REFS[1], hyp)[rtype].recall, abs=1e-6)


def test_text_metrics_grade_and_need_references(engine: VerifierEngine) -> None:
    rewards = [run(engine, "bleu", h, VerifyContext(references=REFS)).reward for h in HYPS]
    assert rewards[0] > rewards[1] > rewards[2] and rewards[2] < 0.1
    exact = run(engine, "chrf", REFS[0], VerifyContext(reference=REFS[0]))
    assert exact.reward == 1.0 and exact.success
    assert run(engine, "rouge", "x").error_type == "missing_context"
    with pytest.raises(BadRequest) as err:
        engine.prepare(VerifierSpec(name="bleu", params={"tokenise": "13a"}))
    assert err.value.param == "params.tokenise" and "unknown parameter" in err.value.message


def test_json_structure(engine: VerifierEngine) -> None:
    params = {"required_keys": ["name", "tags", "address.city"], "key_types": {"age": "integer", "tags": "array"}}
    good = '```json\n{"name": "Ada", "age": 36, "tags": ["x"], "address": {"city": "London"}}\n```'
    assert run(engine, "json_structure", good, **params).reward == 1.0
    partial = 'Sure! {"name": "Ada", "age": "36", "tags": []}'
    r = run(engine, "json_structure", partial, **params)  # missing address.city, age has the wrong type
    assert r.details["passed"] == 3 and r.details["total"] == 5 and r.reward == pytest.approx(0.5 + 0.5 * 3 / 5)
    bad = run(engine, "json_structure", "{'name': 'not json'}", **params)
    assert bad.reward == 0.0 and bad.stage == VerifyStage.COMPILE
    strict = run(engine, "json_structure", '{"name": 1, "extra": 2}', required_keys=["name"], allow_extra_keys=False)
    assert strict.reward == 0.75


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                   "email": {"type": "string", "pattern": "@"}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "email"],
    "additionalProperties": False,
}


def test_json_schema(engine: VerifierEngine) -> None:
    ctx = VerifyContext(json_schema=SCHEMA)
    assert run(engine, "json_schema", '{"name": "a", "age": 3, "email": "a@b", "tags": []}', ctx).reward == 1.0
    one_bad = run(engine, "json_schema", '{"name": "a", "age": -1, "email": "a@b"}', ctx)
    assert one_bad.reward == pytest.approx(0.5 + 0.5 * 3 / 4) and one_bad.details["errors"][0]["path"] == "age"
    missing_two = run(engine, "json_schema", '{"name": "a", "tags": [1]}', ctx)
    assert missing_two.reward == pytest.approx(0.5 + 0.5 * 1 / 4)
    root_wrong = run(engine, "json_schema", "[1, 2]", ctx)
    assert root_wrong.reward == 0.5
    assert run(engine, "json_schema", "not json at all", ctx).reward == 0.0
    assert run(engine, "json_schema", '{"name": "a", "age": 1, "email": "x"}', ctx, partial_credit=False).reward == 0.5
    via_params = run(engine, "json_schema", '{"name": "a", "age": 1, "email": "x@y"}', json_schema=SCHEMA)
    assert via_params.reward == 1.0
    with pytest.raises(BadRequest) as err:
        engine.prepare(VerifierSpec(name="json_schema", params={"json_schema": {"type": "nonsense"}}))
    assert err.value.param == "params.json_schema"
    assert run(engine, "json_schema", "{}").error_type == "missing_context"


def test_regex_format(engine: VerifierEngine) -> None:
    params = {"patterns": [r"^Answer: \d+$", r"(?s)^<reasoning>.*</reasoning>"], "mode": "search",
              "flags": ["MULTILINE"]}
    both = "<reasoning>3 + 4</reasoning>\nAnswer: 7"
    assert run(engine, "regex_format", both, strip=False, **params).reward == 1.0
    assert run(engine, "regex_format", "Answer: 7", **params).reward == 0.5
    assert run(engine, "regex_format", "Answer: 7", partial_credit=False, **params).reward == 0.0
    assert run(engine, "regex_format", "  42  ", pattern=r"\d+", mode="fullmatch").reward == 1.0
    with pytest.raises(BadRequest) as err:
        engine.prepare(VerifierSpec(name="regex_format", params={"pattern": "(unclosed"}))
    assert "not a valid regular expression" in err.value.message
    with pytest.raises(BadRequest):
        engine.prepare(VerifierSpec(name="regex_format", params={}))
