"""Reference-based text metrics: bleu and chrf (sacrebleu), rouge (rouge-score). Reward = the
sentence-level score scaled to [0, 1]; success = reward >= success_threshold. References come from
context.references and/or context.reference (several references: sacrebleu scores against all;
ROUGE takes the best reference)."""

from __future__ import annotations

from typing import Literal

from halo_schemas.verifiers import VerifyContext, VerifyResult, VerifyStage
from pydantic import Field

from halo_verifiers.base import Verifier, VerifierParams
from halo_verifiers.extract import strip_reasoning
from halo_verifiers.registry import register_verifier


class TextParams(VerifierParams):
    success_threshold: float = Field(default=0.5, ge=0, le=1, description="success when reward >= this.")
    strip_reasoning: bool = Field(default=True, description="Drop <think>…</think> blocks before scoring.")


def references_of(context: VerifyContext) -> list[str]:
    refs = list(context.references)
    if context.reference is not None:
        refs.insert(0, context.reference)
    return refs


class TextMetricVerifier(Verifier):
    kind = "text"
    params: TextParams

    def hypothesis(self, completion: str) -> str:
        return strip_reasoning(completion).strip() if self.params.strip_reasoning else completion

    def scored(self, reward: float, details: dict[str, object]) -> VerifyResult:
        ok = reward >= self.params.success_threshold
        return self.result(reward, VerifyStage.SCORED, success=ok, details=details)


class BleuParams(TextParams):
    tokenize: Literal["13a", "none", "intl", "char", "zh"] = Field(default="13a", description="sacrebleu tokenizer.")
    smooth_method: Literal["exp", "floor", "add-k", "none"] = Field(default="exp", description="Smoothing.")
    smooth_value: float | None = Field(default=None, ge=0, description="Value for floor / add-k smoothing.")
    lowercase: bool = Field(default=False, description="Case-insensitive BLEU.")


@register_verifier("bleu", origin="builtin")
class BleuVerifier(TextMetricVerifier):
    """Sentence BLEU (sacrebleu) against the reference(s), scaled to [0, 1]."""

    Params = BleuParams
    params: BleuParams

    def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
        refs = references_of(context)
        if not refs:
            return self.missing_context("references", "or context.reference")
        import sacrebleu

        s = sacrebleu.sentence_bleu(self.hypothesis(completion), refs, smooth_method=self.params.smooth_method,
                                    smooth_value=self.params.smooth_value, lowercase=self.params.lowercase,
                                    tokenize=self.params.tokenize)
        return self.scored(s.score / 100.0, {"bleu": s.score, "precisions": list(s.precisions), "bp": s.bp,
                                              "sys_len": s.sys_len, "ref_len": s.ref_len, "references": len(refs)})


class ChrfParams(TextParams):
    char_order: int = Field(default=6, ge=1, le=20, description="Character n-gram order.")
    word_order: int = Field(default=0, ge=0, le=6, description="Word n-gram order (2 = chrF++).")
    beta: int = Field(default=2, ge=1, le=10, description="Recall weight.")
    lowercase: bool = Field(default=False, description="Case-insensitive.")
    whitespace: bool = Field(default=False, description="Keep whitespace in character n-grams.")
    eps_smoothing: bool = Field(default=False, description="Epsilon smoothing (as chrF.py / Moses).")


@register_verifier("chrf", origin="builtin")
class ChrfVerifier(TextMetricVerifier):
    """Sentence chrF / chrF++ (sacrebleu) against the reference(s), scaled to [0, 1]."""

    Params = ChrfParams
    params: ChrfParams

    def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
        refs = references_of(context)
        if not refs:
            return self.missing_context("references", "or context.reference")
        from sacrebleu.metrics import CHRF

        p = self.params
        metric = CHRF(char_order=p.char_order, word_order=p.word_order, beta=p.beta, lowercase=p.lowercase,
                      whitespace=p.whitespace, eps_smoothing=p.eps_smoothing)
        s = metric.sentence_score(self.hypothesis(completion), refs)
        return self.scored(s.score / 100.0, {"chrf": s.score, "references": len(refs)})


class RougeParams(TextParams):
    rouge_type: Literal["rouge1", "rouge2", "rouge3", "rouge4", "rougeL", "rougeLsum"] = Field(
        default="rougeL", description="ROUGE variant.")
    measure: Literal["fmeasure", "precision", "recall"] = Field(default="fmeasure", description="Which value is the reward.")
    use_stemmer: bool = Field(default=True, description="Porter-stem tokens.")


@register_verifier("rouge", origin="builtin")
class RougeVerifier(TextMetricVerifier):
    """ROUGE (rouge-score) against the reference(s), best reference, as the reward."""

    Params = RougeParams
    params: RougeParams

    def verify(self, completion: str, context: VerifyContext) -> VerifyResult:
        refs = references_of(context)
        if not refs:
            return self.missing_context("references", "or context.reference")
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer([self.params.rouge_type], use_stemmer=self.params.use_stemmer)
        hyp = self.hypothesis(completion)
        # score_multi keeps the best reference by F-measure; for precision/recall pick the best by that measure.
        best = max((scorer.score(r, hyp)[self.params.rouge_type] for r in refs),
                   key=lambda s: getattr(s, self.params.measure))
        value = float(getattr(best, self.params.measure))
        return self.scored(value, {"precision": best.precision, "recall": best.recall, "fmeasure": best.fmeasure,
                                   "rouge_type": self.params.rouge_type, "references": len(refs)})
