"""One entry point for every step, and recipes (steps chained, each reading the previous output).

The model-backed parts (the teacher, a verifier used by synthesize or as a judge) are given as factories, so
the service plugs in bus clients and tests can plug in anything that behaves the same::

    result = run_step(DedupStep(op="dedup", threshold=0.8), "in.jsonl", "out.jsonl", Plugins())
    results = run_recipe(recipe, run_dir, Plugins(verify=..., teacher=...), on_step=print)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from halo_schemas.data import (
    DecontaminateParams,
    DedupParams,
    FilterParams,
    RecipeSpec,
    ScoreParams,
    SynthesizeParams,
    TeacherSpec,
)
from halo_schemas.verifiers import VerifierSpec, VerifyContext

from halo_data.core import decontam, dedup, filter, score, synthesize
from halo_data.core.common import DataError, ProgressFn, StepResult, StopFn, get_path, ignore, never

OP_OF: dict[type, str] = {DedupParams: "dedup", DecontaminateParams: "decontaminate", ScoreParams: "score",
                          FilterParams: "filter", SynthesizeParams: "synthesize"}


def op_of(params: Any) -> str:
    for cls, op in OP_OF.items():
        if isinstance(params, cls):
            return op
    raise TypeError(f"not a data step: {type(params).__name__}")


def step_params(params: Any) -> dict[str, Any]:
    """``{"op": ..., <the step's own parameters>}`` (recorded as the dataset's recipe)."""
    cls = next(c for c in OP_OF if isinstance(params, c))
    return {"op": op_of(params), **params.model_dump(mode="json", include=set(cls.model_fields))}


@dataclass
class Plugins:
    """Factories for the model-backed parts: ``verify(spec)`` -> [(completion, context)] -> rewards;
    ``teacher(spec, params)`` -> a :class:`~halo_data.core.synthesize.Teacher`."""

    verify: Callable[[VerifierSpec], synthesize.VerifyFn] | None = None
    teacher: Callable[[TeacherSpec, SynthesizeParams], synthesize.Teacher] | None = None


def _judge(params: ScoreParams, plugins: Plugins) -> score.JudgeFn | None:
    if params.judge is None:
        return None
    if plugins.verify is None:
        raise DataError("score.judge needs the verifier-sandbox service")
    verify = plugins.verify(params.judge)

    def judge(rows: list[tuple[dict[str, Any], str]]) -> list[float | None]:
        items = []
        for rec, text in rows:
            ctx: dict[str, Any] = {}
            for field, source in params.judge_context.items():
                try:
                    ctx[field] = get_path(rec, source)
                except KeyError:
                    continue
            completion = rec.get("completion") if isinstance(rec.get("completion"), str) else text
            items.append((completion, VerifyContext.model_validate(ctx)))
        return list(verify(items))

    return judge


def run_step(params: Any, input_path: str | Path, output_path: str | Path, plugins: Plugins, *,
             text_key: str | None = None, progress: ProgressFn = ignore, should_stop: StopFn = never) -> StepResult:
    """Run one step from its parameters (a ``*Params`` / ``*Step`` / ``*Spec`` model). The result's ``output`` is
    absolute and its details carry ``size_bytes`` and ``sha256``."""
    result = _run(params, Path(input_path).expanduser(), Path(output_path).expanduser().absolute(), plugins,
                  text_key=text_key, progress=progress, should_stop=should_stop)
    result.details["size_bytes"] = Path(result.output).stat().st_size
    return result


def _run(params: Any, input_path: Path, output_path: Path, plugins: Plugins, *, text_key: str | None,
         progress: ProgressFn, should_stop: StopFn) -> StepResult:
    common = {"progress": progress, "should_stop": should_stop}
    if isinstance(params, DedupParams):
        cfg = dedup.DedupConfig(method=params.method, threshold=params.threshold, num_perm=params.num_perm,
                                shingle_size=params.shingle_size, shingle_unit=params.shingle_unit,
                                lowercase=params.lowercase, workers=params.workers, minhash_seed=params.minhash_seed)
        return dedup.dedup(input_path, output_path, cfg, text_key=text_key, **common)
    if isinstance(params, DecontaminateParams):
        return decontam.decontaminate(input_path, output_path, benchmarks=params.benchmarks, ngram=params.ngram,
                                      min_matches=params.min_matches, mode=params.mode, eval_key=params.eval_key,
                                      text_key=text_key, **common)
    if isinstance(params, ScoreParams):
        return score.score(input_path, output_path, weights=params.weights, minimums=params.minimums,
                           min_words=params.min_words, max_words=params.max_words, keep_rejected=params.keep_rejected,
                           judge=_judge(params, plugins), text_key=text_key, **common)
    if isinstance(params, FilterParams):
        return filter.filter_rows(input_path, output_path, column=params.column, min=params.min, max=params.max,
                                  top_percent=params.top_percent, missing=params.missing, **common)
    if isinstance(params, SynthesizeParams):
        if plugins.teacher is None or plugins.verify is None:
            raise DataError("synthesize needs a teacher and the verifier-sandbox service")
        teacher = plugins.teacher(params.teacher, params)
        try:
            return synthesize.synthesize(input_path, output_path, params, teacher=teacher,
                                         verify=plugins.verify(params.verifier), **common)
        finally:
            close = getattr(teacher, "close", None)
            if close:
                close()
    raise TypeError(f"not a data step: {type(params).__name__}")


def recipe_outputs(spec: RecipeSpec, run_dir: Path) -> list[Path]:
    """Where each step writes: ``<run dir>/NN-<op>.jsonl``; the last step writes ``spec.output`` when given."""
    outs = [run_dir / f"{i + 1:02d}-{s.op}.jsonl" for i, s in enumerate(spec.steps)]
    if spec.output:
        outs[-1] = Path(spec.output).expanduser()
    return outs


def run_recipe(spec: RecipeSpec, input_path: str | Path, run_dir: Path, plugins: Plugins, *,
               on_step: Callable[[int, StepResult], None] = lambda i, r: None, progress: ProgressFn = ignore,
               should_stop: StopFn = never) -> list[StepResult]:
    """Run the steps in order. ``on_step`` runs after each step (it registers the dataset); finished steps are
    recorded in ``<run dir>/recipe-state.json`` and a restarted job skips them (their outputs are kept) and continues with the first unfinished one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "recipe-state.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {"done": []}
    results: list[StepResult] = []
    current = str(input_path)
    for i, (step, out) in enumerate(zip(spec.steps, recipe_outputs(spec, run_dir), strict=True)):
        done = next((d for d in state["done"] if d["index"] == i), None)
        if done is not None and Path(done["summary"]["output"]).exists():
            result = StepResult(done["summary"]["op"], done["summary"]["output"], done["summary"]["rows_in"],
                                done["summary"]["rows_out"], details={"resumed": True})
            result.details.update({k: v for k, v in done["summary"].items()
                                   if k not in ("op", "output", "rows_in", "rows_out")})
        else:
            result = run_step(step, current, out, plugins, text_key=spec.text_key, progress=progress,
                              should_stop=should_stop)
            on_step(i, result)  # may add to result.details (the registered dataset id), recorded below
            state["done"].append({"index": i, "summary": result.summary()})
            state_path.write_text(json.dumps(state, indent=1))
        results.append(result)
        current = result.output
    return results
