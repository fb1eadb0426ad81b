"""Sample-then-verify for pass@k, pipelined: while one chunk of problems is verified, the next is sampled.

    report, rows = await run_passk(problems, n=10, ks=[1, 5, 10], generate=gen, verify=ver)

``generate(problems) -> [[completion] * n per problem]`` and ``verify([(problem, completion)]) ->
[SampleOutcome]`` are given by the caller (the service wires them to the rollout and verifier-sandbox
clients; tests can wire anything), so this module has no bus in it. ``rows`` is one dict per sample
(task_id, index, completion, stages) for the run dir's ``passk_samples.jsonl``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from halo_common.errors import BadRequest

from halo_eval.core.passk import PassKReport, SampleOutcome, parse_ks, summarize_passk
from halo_eval.core.problems import Problem

#: Stop strings for HumanEval-style continuation (the Codex paper's set): the function body ends there.
HUMANEVAL_STOPS = ["\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint("]

Generate = Callable[[Sequence[Problem]], Awaitable[list[list[str]]]]
Verify = Callable[[Sequence[tuple[Problem, str]]], Awaitable[list[SampleOutcome]]]


def prompt_for(problem: Problem) -> str:
    """What the model is asked: the HumanEval stub itself (continued), or an MBPP task with its tests."""
    if problem.verifier == "humaneval":
        return problem.prompt
    tests = "\n".join(problem.tests) if isinstance(problem.tests, list) else problem.tests
    return f"{problem.prompt.strip()}\nYour code should pass these tests:\n{tests}\n```python\n"


def stops_for(problem: Problem) -> list[str]:
    return HUMANEVAL_STOPS if problem.verifier == "humaneval" else ["```"]


async def run_passk(problems: Sequence[Problem], *, n: int, ks: Sequence[int], generate: Generate, verify: Verify,
                    chunk_size: int = 8, on_progress: Callable[[int, int], None] | None = None,
                    cancelled: Callable[[], bool] | None = None) -> tuple[PassKReport, list[dict[str, Any]]]:
    """pass@k over ``problems`` with ``n`` samples each (k > n and an empty set are refused up front)."""
    if not problems:
        raise BadRequest("no problems to score (the dataset is empty)", param="dataset")
    ks = parse_ks(list(ks), n)
    chunks = [list(problems[i:i + chunk_size]) for i in range(0, len(problems), chunk_size)]
    outcomes: dict[str, list[SampleOutcome]] = {}
    rows: list[dict[str, Any]] = []
    done = 0

    async def check(part: list[Problem], completions: list[list[str]]) -> None:
        nonlocal done
        if len(completions) != len(part) or any(len(c) != n for c in completions):
            raise BadRequest(f"expected {n} completions for each of {len(part)} problems", param="n")
        pairs = [(p, c) for p, cs in zip(part, completions, strict=True) for c in cs]
        results = await verify(pairs)
        for i, ((p, c), o) in enumerate(zip(pairs, results, strict=True)):
            outcomes.setdefault(p.task_id, []).append(o)
            rows.append({"task_id": p.task_id, "index": i % n, "completion": c, "stage": o.stage,
                         "reached": o.reached, "extracted": o.extracted, "compiled": o.compiled, "ran": o.ran,
                         "correct": o.correct, "error": o.error})
        done += len(part)
        if on_progress:
            on_progress(done, len(problems))

    pending: asyncio.Task[None] | None = None
    try:
        for part in chunks:
            if cancelled and cancelled():
                break
            completions = await generate(part)
            if pending is not None:
                await pending
            pending = asyncio.ensure_future(check(part, completions))
        if pending is not None:
            await pending
            pending = None
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
    ordered = {p.task_id: outcomes[p.task_id] for p in problems if p.task_id in outcomes}
    return summarize_passk(ordered, ks), rows
